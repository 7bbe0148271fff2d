"""benchmarks/gpu_check.sh: the prepared GPU run, exercised end to end in its CPU mode (tiny presets),
as CI runs it, on a simulated bare machine (deepspeed, datasets, lm_eval and flash_attn made to look
uninstalled); and the GPU mode's benchmark settings, which only a GPU can run."""

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUDGET_S = 300  # the CPU mode takes 1-2.5 min on a loaded 2-core VM (its default budget); the GPU mode has 480 s


# Loaded by every Python process of the run (PYTHONPATH): the blocked packages cannot be found, as on a
# machine with only torch, transformers and accelerate; importlib.util.find_spec says None for them.
BARE_MACHINE = """
import importlib.machinery, sys

BLOCKED = {"deepspeed", "datasets", "lm_eval", "flash_attn"}


class _BarePathFinder(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in BLOCKED else super().find_spec(name, path, target)


sys.meta_path[:] = [_BarePathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    bare = tmp_path_factory.mktemp("bare")
    (bare / "sitecustomize.py").write_text(BARE_MACHINE)
    pythonpath = os.pathsep.join(p for p in (str(bare), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": pythonpath}
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(out), "--budget-s", str(BUDGET_S)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=BUDGET_S + 60)
    assert res.returncode == 0, res.stderr[-4000:] + res.stdout[-2000:]
    stem = f"cpu-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}-check"
    return json.loads((out / f"{stem}.json").read_text()), (out / f"{stem}.md").read_text(), res.stdout


def test_cpu_mode_checks_pass_within_budget(cpu_run):
    doc, _, _ = cpu_run
    assert doc["summary"]["ok"] and doc["summary"]["failed"] == 0
    assert doc["wall_s"] < BUDGET_S
    assert doc["heavy_modules_loaded"] == []  # no deepspeed / datasets / lm_eval / data_prep on this path
    assert not any(doc["environment"]["installed"].values())  # and it ran where they cannot be imported
    by_check = {}
    for row in doc["checks"]:
        by_check.setdefault(row["check"], []).append(row)
    assert {r["name"] for r in by_check["parity"]} == {f"{p}/{a}" for p in ("tiny-llama", "tiny-qwen3", "tiny-gpt2")
                                                       for a in ("eager", "sdpa")}
    assert {r["native_class"] for r in by_check["parity"]} == {"LlamaForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"}
    assert all(r["ours_vs_fp32"] <= r["bound"] for r in by_check["parity"])
    assert len(by_check["sdpa-kernels"]) == 4 and len(by_check["document-masking"]) == 4
    assert "flash_attn" in doc["environment"]["flash_attn"]  # says why flash_attention_2 was not checked


def test_cpu_mode_benchmarks_ours_and_native(cpu_run):
    doc, md, stdout = cpu_run
    assert [b["preset"] for b in doc["benchmarks"]] == ["tiny-llama", "tiny-qwen3"]
    for bench in doc["benchmarks"]:
        assert bench["status"] == "ok", bench
        assert bench["command"].startswith("python -m benchmarks.step --preset ")
        rows = {r["label"]: r for r in bench["rows"]}
        ours, native = rows["ours/sdpa/compile-off/chunked"], rows["native/sdpa/compile-off/full"]
        for r in (ours, native):
            assert r["status"] == "ok" and r["tokens_per_sec"] > 0 and r["tflops"] > 0 and r["micro_batch"] == 2
            assert r["mfu"] is None and r["peak_memory_gb"] > 0  # no dense peak on CPU; live-tensor peak
        assert ours["loss_first_step"] == pytest.approx(native["loss_first_step"], abs=1e-4)  # same weights, batch
        assert ours["ratio_tokens_per_sec_vs_native"] > 0
        assert bench["result"]["settings"]["seq_len"] == 128
    assert "## Checks" in md and "| tiny-llama | ours/sdpa/compile-off/chunked | ok | 2 |" in md
    assert md in stdout  # the table is printed too


def test_gpu_mode_settings():
    """What the GPU run will do (not runnable here): bf16 SDPA compiled training steps at seq 2048 for
    llama3-1.5b and qwen3-1.8b, ours with the chunked loss and native, a micro-batch searched to fit."""
    gc = _module()
    mode = gc.MODES["cuda"]
    assert mode["presets"] == ["llama3-1.5b", "qwen3-1.8b"] and mode["budget_s"] <= 480
    argv = gc.benchmark_argv("llama3-1.5b", mode, "cuda")
    from benchmarks.step import build_parser

    args = build_parser().parse_args(argv)
    assert (args.device, args.dtype, args.seq_len, args.attn, args.compile, args.loss, args.micro_batch) == (
        "cuda", "bf16", 2048, "sdpa", "on", "chunked", "auto")
    assert not args.no_native and args.precision == "amp"
    # a spent budget skips a benchmark instead of overrunning it
    assert gc.run_benchmark("qwen3-1.8b", mode, "cuda", timeout_s=5)["status"] == "skipped"
