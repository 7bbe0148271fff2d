"""eval.hub: the --dry-run folder loads with plain transformers (in a process that never imports our
packages), the model card says what the run's files say, and the upload reaches a local fake Hub
with the token in the Authorization header only: never in stdout, stderr, logs or written files."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

SECRET = "hf_llmstackTESTtoken0123456789abcdefXYZ"
PROMPT = "Question: Which gas do plants take in?\nAnswer: carbon dioxide"

# Runs with the repo NOT importable (cwd elsewhere, no PYTHONPATH): only transformers may load it.
FRESH_LOAD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("modeling", "eval", "training", "data_prep"))
with torch.no_grad():
    logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
print(json.dumps({"class": type(model).__name__, "ours_imported": ours, "logits": logits.tolist(),
                  "eos": model.generation_config.eos_token_id}))
"""


@pytest.fixture(scope="module")
def export(checkpoint, harness_run, run_cli, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "tiny-llama-test"
    proc = run_cli("eval.hub", str(checkpoint), "--repo-id", "llmstack-test/tiny-llama-test", "--dry-run",
                   "--out", str(out), "--eval-results", str(harness_run["json"]), "--dataset", "HuggingFaceFW/fineweb-edu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing uploaded" in proc.stdout
    return out


def test_dry_run_folder_has_the_native_files(export):
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= names
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config  # no remote code
    tok_config = json.loads((export / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "local_files_only" not in tok_config
    # generation stops at the tokenizer's EOS; the tokenizer knows the trained context (the run's seq_len)
    gen = json.loads((export / "generation_config.json").read_text())
    for fields in (config, gen):
        assert (fields["bos_token_id"], fields["eos_token_id"], fields["pad_token_id"]) == (1, 0, 2)
    assert tok_config["model_max_length"] == 128


def test_dry_run_folder_loads_with_plain_transformers_in_a_fresh_process(export, checkpoint, tokenizer, tmp_path):
    from modeling import DecoderForCausalLM

    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(export), PROMPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["class"] == "LlamaForCausalLM" and got["ours_imported"] == []
    assert got["eos"] == tokenizer.eos_token_id
    ours = DecoderForCausalLM.from_pretrained(checkpoint / "model").eval()
    with torch.no_grad():
        expected = ours(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(torch.tensor(got["logits"]), expected, atol=1e-4, rtol=1e-4)


def test_model_card_metadata_and_body_come_from_the_run(export, harness_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(export / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"llmstack", "llama", "causal-lm"} <= set(card.data.tags)
    assert card.data.datasets == ["HuggingFaceFW/fineweb-edu"]
    text = card.text
    assert "| tokens trained | 32,768 |" in text  # trainer_state.json of iter_000008
    assert "| hardware | 2 x NVIDIA H100 80GB HBM3 |" in text  # log.jsonl config record
    assert "| MFU (median) | 45.0% |" in text  # train records 2..8 (the first is warm-up): 0.42..0.48
    assert "| parameters | 360,768 (98,624 non-embedding) |" in text
    assert "| last validation loss | 5.7000 |" in text  # eval record at iter 8, not the one at 12
    # Training hyperparameters and framework versions, as the HF Trainer's card has them
    assert "### Training hyperparameters" in text and "| learning rate (peak) | 0.0003 |" in text
    assert "| global batch | 32 sequences x 128 tokens = 4,096 tokens |" in text
    assert "| optimizer | AdamW (betas=(0.9, 0.95), eps=1e-08) |" in text
    import torch
    import transformers

    assert "### Framework versions" in text and f"- Transformers {transformers.__version__}" in text
    assert f"- PyTorch {torch.__version__.split('+')[0]}" in text
    acc = harness_run["payload"]["results"]["arc_easy"]["acc"]
    assert f"| ARC-Easy | acc | {100 * acc:.1f} ± " in text
    # Fixture-sized local files are not the official test splits: scores stay out of model-index.
    assert card.data.eval_results is None and "Left out of the card's `model-index`" in text


def test_model_index_lists_full_official_test_set_scores():
    from huggingface_hub import ModelCardData

    from eval.model_card import _eval_results, publishable_results

    evaluation = {"settings": {"limit": None, "data": "hub"}, "results": {
        "arc_easy": {"acc": 0.7361, "acc_norm": 0.70, "acc_mean_logprob": 0.72, "n": 2376},
        "openbookqa": {"acc": 0.30, "acc_norm": 0.402, "acc_mean_logprob": 0.35, "n": 100},
    }}
    keep, skipped = publishable_results(evaluation)
    assert list(keep) == ["arc_easy"] and "openbookqa: 100 questions" in skipped[0]
    data = ModelCardData(model_name="m", eval_results=_eval_results(keep)).to_dict()
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert {"type": "acc", "value": 73.61, "name": "accuracy"} in metrics
    assert data["model-index"][0]["results"][0]["dataset"]["type"] == "allenai/ai2_arc"


# ----------------------------------------------------------------------------------------------
# Upload against a local fake Hub
# ----------------------------------------------------------------------------------------------
class FakeHub(BaseHTTPRequestHandler):
    """Answers the calls create_repo + upload_folder make; records method, path, auth, body."""

    requests: list[dict] = []
    deny: bool = False

    def _reply(self, code: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        base = f"http://{self.headers['Host']}"
        if self.deny:
            return self._reply(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/repos/create":
            req = json.loads(body)
            return self._reply(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
        if self.path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._reply(404, {"error": f"fake hub: no route {self.path}"})

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def fake_hub():
    FakeHub.requests, FakeHub.deny = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _commit_files(body: bytes) -> dict[str, bytes]:
    """The files of a commit request (NDJSON: a header line, then {"key": "file", "value": {...}})."""
    files = {}
    for line in body.decode().splitlines():
        item = json.loads(line)
        if item.get("key") == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_upload_reaches_the_endpoint_with_the_token_only_in_the_header(checkpoint, harness_run, fake_hub, tmp_path,
                                                                       monkeypatch, capfd, caplog):
    import logging

    import huggingface_hub.constants

    from eval.hub import main as hub_main

    ckpt = tmp_path / "iter_000008"  # a complete checkpoint is named iter_N (training/checkpoint_layout.py)
    shutil.copytree(checkpoint, ckpt)
    shutil.copy(harness_run["json"], ckpt / "eval_results.json")  # found next to the checkpoint
    out = tmp_path / "export"
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # tests run offline; this server is local
    caplog.set_level(logging.DEBUG)  # the most talkative logging must not leak it either
    rc = hub_main([str(ckpt), "--repo-id", "llmstack-test/tiny-upload", "--private", "--out", str(out),
                   "--endpoint", fake_hub, "--verbose"])
    captured = capfd.readouterr()
    assert rc == 0, captured.out + captured.err
    paths = [r["path"] for r in FakeHub.requests]
    assert paths[0] == "/api/repos/create"
    assert any(p.startswith("/api/models/llmstack-test/tiny-upload/preupload/") for p in paths)
    assert any(p.startswith("/api/models/llmstack-test/tiny-upload/commit/") for p in paths)
    assert all(r["auth"] == f"Bearer {SECRET}" for r in FakeHub.requests)
    create = json.loads(FakeHub.requests[0]["body"])
    assert create["visibility"] == "private" and create["name"] == "tiny-upload" and create["organization"] == "llmstack-test"
    commit = next(r for r in FakeHub.requests if "/commit/" in r["path"])
    uploaded = _commit_files(commit["body"])
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(uploaded)
    assert b"| ARC-Easy | acc |" in uploaded["README.md"]  # eval results found beside the checkpoint
    assert "uploaded" in captured.out
    # The token went out in the header, and nowhere else.
    assert SECRET not in captured.out + captured.err + caplog.text
    for r in FakeHub.requests:
        assert SECRET.encode() not in r["body"]
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_rejected_token_gives_a_clear_error_without_the_token(fake_hub, tmp_path, monkeypatch, capsys, caplog):
    import huggingface_hub.constants

    from eval.errors import EvalError
    from eval.hub import upload

    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    FakeHub.deny = True
    with pytest.raises(EvalError) as err:
        upload(tmp_path, "llmstack-test/denied", private=False, endpoint=fake_hub, commit_message="x")
    message = str(err.value)
    assert "HTTP 401" in message and "invalid or expired" in message
    assert FakeHub.requests[0]["auth"] == f"Bearer {SECRET}"
    captured = capsys.readouterr()
    assert SECRET not in message + repr(err.value) + captured.out + captured.err + caplog.text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained HTTP error carrying headers


def test_no_token_fails_before_any_request(fake_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from eval.errors import EvalError
    from eval.hub import upload

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(EvalError, match="HF_TOKEN"):
        upload(tmp_path, "llmstack-test/x", private=False, endpoint=fake_hub, commit_message="x")
    assert FakeHub.requests == []


def test_hub_cli_rejects_a_bad_repo_id_and_a_missing_checkpoint(run_cli, tmp_path):
    proc = run_cli("eval.hub", str(tmp_path), "--repo-id", "no-slash", "--dry-run")
    assert proc.returncode == 2 and "--repo-id 'no-slash': expected ORG/NAME" in proc.stderr
    proc = run_cli("eval.hub", str(tmp_path / "missing"), "--repo-id", "a/b", "--dry-run")
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_the_harness_loads_a_native_export_as_is(export):
    from eval.checkpoint import load_model, model_summary, resolve_checkpoint

    resolved = resolve_checkpoint(export)
    model = load_model(resolved)
    assert resolved.kind == "model-dir" and type(model).__name__ == "LlamaForCausalLM"
    assert model_summary(resolved, model)["n_params"] == 360768
