"""Data at scale: compressed JSONL, several machines, token budgets, kill -9, chat tokenizers, v1 dirs."""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import ManifestError, finalize, load_manifest
from data_prep.prepare import main as prepare_main
from data_prep.prepare import prepare
from data_prep.shards import CRASH_ENV

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory, corpus_dir, paragraphs) -> tuple[Path, list[str]]:
    """The shipped plays as paragraphs in 6 JSONL files: 3 .jsonl.zst, 2 .jsonl.gz, 1 plain."""
    import zstandard

    docs = [d for f in sorted(corpus_dir.glob("*.txt"))[:6] for d in paragraphs(f.read_text())]
    d = tmp_path_factory.mktemp("jsonl")
    parts = np.array_split(np.arange(len(docs)), 6)
    files = []
    for k, idx in enumerate(parts):
        payload = "".join(json.dumps({"text": docs[i], "id": int(i)}) + "\n" for i in idx).encode()
        name = f"part{k}." + ("jsonl.zst" if k < 3 else "jsonl.gz" if k < 5 else "jsonl")
        data = (zstandard.ZstdCompressor().compress(payload) if k < 3
                else gzip.compress(payload) if k < 5 else payload)
        (d / name).write_bytes(data)
        files.append([docs[i] for i in idx])
    # prepare reads files sorted by name, and task t of N reads files t, t+N, ...
    return d, [doc for part in files for doc in part]


def multiset(docs) -> collections.Counter:
    return collections.Counter(tuple(d.tolist()) for d in docs)


def test_compressed_jsonl_counts_and_text(tmp_path, jsonl_corpus, tokenizer, split_docs) -> None:
    src, docs = jsonl_corpus
    m = prepare([str(src / "*.jsonl*")], tokenizer, tmp_path / "d", seq_len=64, val_fraction=0.0,
                progress=False)
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(REPO / "tests/assets/tokenizer/tokenizer.json"))  # direct, independent
    lengths = [len(e.ids) for e in ref.encode_batch(docs, add_special_tokens=False)]
    assert m["splits"]["train"]["documents"] == len(docs)
    assert m["splits"]["train"]["tokens"] == sum(lengths) + len(docs)  # + one separator each
    got = split_docs(tmp_path / "d")["train"]
    for k in (0, 1, len(docs) // 3, len(docs) - 1):  # spans .zst, .gz and plain files
        assert got[k][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(got[k][:-1].tolist()) == docs[k]
    assert m["sources"][0]["kind"] == "glob" and m["sources"][0]["files"] == 6


def test_two_machines_equal_one(tmp_path, jsonl_corpus, tokenizer_dir, tokenizer, split_docs, in_val) -> None:
    src, docs = jsonl_corpus
    common = dict(seq_len=32, val_fraction=0.05, tasks=4, progress=False)
    one = prepare([str(src)], tokenizer, tmp_path / "one", **common)
    two = tmp_path / "two"
    status = prepare([str(src)], tokenizer, two, node_rank=0, num_nodes=2, **common)
    assert status["complete"] is False and status["missing_tasks"] == [2, 3]
    with pytest.raises(ManifestError, match=r"2 of 4 tasks have not finished \(tasks 2, 3.*node rank\(s\) \[1\]"):
        finalize(two)
    assert not (two / "manifest.json").exists()
    # The second machine: the CLI, as it would run there; it finishes the set and writes the manifest.
    assert prepare_main(["--input", str(src), "--tokenizer", str(tokenizer_dir), "--out", str(two),
                         "--seq-len", "32", "--val-fraction", "0.05", "--tasks", "4", "--node-rank",
                         "1", "--num-nodes", "2", "--no-progress"]) == 0
    (two / "manifest.json").unlink()  # and --finalize writes it again, explicitly
    assert prepare_main(["--out", str(two), "--finalize"]) == 0
    m = load_manifest(two, verify_hash=True)
    for split in ("train", "val"):
        assert m["splits"][split] == one["splits"][split]  # same shards, counts and sha256
    # The split follows the text alone: a different task count gives the same split (as multisets).
    three = prepare([str(src)], tokenizer, tmp_path / "three", **{**common, "tasks": 3})
    a, b = split_docs(tmp_path / "one"), split_docs(tmp_path / "three")
    for split in ("train", "val"):
        assert multiset(a[split]) == multiset(b[split])
        assert three["splits"][split]["tokens"] == one["splits"][split]["tokens"]
    assert one["splits"]["val"]["documents"] == sum(map(in_val, docs))


def test_nodes_may_start_in_any_order_and_only_node_0_clears(tmp_path, jsonl_corpus, tokenizer) -> None:
    """Node 1 first on a fresh directory writes its tasks without clearing anything; node 0 then resumes
    the same run and completes it, equal to one machine. --overwrite is node 0's alone: another node
    clearing --out would delete shards node 0 already wrote."""
    src, _ = jsonl_corpus
    common = dict(seq_len=32, val_fraction=0.05, tasks=4, progress=False)
    one = prepare([str(src)], tokenizer, tmp_path / "one", **common)
    two = tmp_path / "two"
    assert prepare([str(src)], tokenizer, two, node_rank=1, num_nodes=2, **common)["missing_tasks"] == [0, 1]
    done = prepare([str(src)], tokenizer, two, node_rank=0, num_nodes=2, **common)
    for split in ("train", "val"):
        assert done["splits"][split] == one["splits"][split]
    with pytest.raises(ValueError, match="--overwrite on node rank 1: only node rank 0 clears --out"):
        prepare([str(src)], tokenizer, two, node_rank=1, num_nodes=2, overwrite=True, **common)
    assert load_manifest(two, verify_hash=True)["splits"] == done["splits"]  # nothing was touched


def test_max_tokens_budget(tmp_path, jsonl_corpus, tokenizer, split_docs) -> None:
    src, docs = jsonl_corpus
    budget, tasks = 20_000, 3
    m = prepare([str(src)], tokenizer, tmp_path / "d", seq_len=32, val_fraction=0.05, tasks=tasks,
                max_tokens=budget, shard_tokens=4000, progress=False)
    m = load_manifest(tmp_path / "d", verify_hash=True)
    per_task = -(-budget // tasks)
    longest = max(len(d) for d in split_docs(tmp_path / "d")["train"])
    totals = collections.Counter()
    for shard in m["splits"]["train"]["shards"]:
        totals[int(Path(shard["file"]).name[:5])] += shard["tokens"]
    assert sorted(totals) == list(range(tasks))
    for t, tokens in totals.items():  # each task stops after the document that reaches its budget
        assert per_task <= tokens < per_task + longest
    assert m["stats"]["max_tokens"] == budget and not m["stats"]["tasks_short_of_budget"]
    assert budget <= m["splits"]["train"]["tokens"] < budget + tasks * longest
    # a budget larger than the corpus: every task runs dry, said in the manifest
    big = prepare([str(src)], tokenizer, tmp_path / "e", seq_len=32, val_fraction=0.05, tasks=2,
                  max_tokens=1e12, progress=False)
    assert big["stats"]["tasks_short_of_budget"] == [0, 1]
    assert any("ran out of input" in w for w in big["warnings"])


def test_kill_9_and_rerun(tmp_path, jsonl_corpus, tokenizer_dir, split_docs) -> None:
    src, _ = jsonl_corpus
    args = ["--input", str(src), "--tokenizer", str(tokenizer_dir), "--seq-len", "32",
            "--val-fraction", "0.1", "--tasks", "3", "--chunk-chars", "20000", "--no-progress"]
    env = {**os.environ, CRASH_ENV: "3:kill", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        # Own session, output to a file: datatrove's manager process outlives a SIGKILLed parent
        # (as on a preempted node), holding inherited pipes open; it is ended with its group below.
        killed = subprocess.Popen([sys.executable, "-m", "data_prep.prepare", *args, "--out",
                                   str(tmp_path / "out")], cwd=REPO, env=env, stdout=f, stderr=f,
                                  start_new_session=True)
        try:
            assert killed.wait(timeout=300) == -9, log.read_text()[-2000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(killed.pid, signal.SIGKILL)
    assert not (tmp_path / "out" / "manifest.json").exists()
    # Rerun (in this process, to save an interpreter start-up) with the same command.
    assert prepare_main([*args, "--out", str(tmp_path / "out")]) == 0
    assert prepare_main([*args, "--out", str(tmp_path / "ref")]) == 0  # uninterrupted reference
    got, ref = split_docs(tmp_path / "out"), split_docs(tmp_path / "ref")
    for split in ("train", "val"):
        assert multiset(got[split]) == multiset(ref[split])


def test_chat_tokenizer_gets_end_of_text_separator(tmp_path, small_corpus, tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    qwen_like = AutoTokenizer.from_pretrained(str(tokenizer_dir))  # <|endoftext|> is id 0
    qwen_like.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    qwen_like.eos_token = "<|im_end|>"
    end_of_text = qwen_like.convert_tokens_to_ids("<|endoftext|>")
    m = prepare([str(small_corpus)], qwen_like, tmp_path / "d", seq_len=8, val_fraction=0,
                progress=False)
    assert m["eos_id"] == end_of_text != qwen_like.convert_tokens_to_ids("<|im_end|>")
    assert any("<|im_end|>" in w and "<|endoftext|>" in w for w in m["warnings"])
    arr = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][0]["file"], dtype="<u2")
    assert (arr == end_of_text).sum() == m["splits"]["train"]["documents"] and arr[-1] == end_of_text
    assert AutoTokenizer.from_pretrained(str(tmp_path / "d" / "tokenizer")).eos_token == "<|endoftext|>"
    # --eos-token still wins
    m2 = prepare([str(small_corpus)], qwen_like, tmp_path / "e", seq_len=8, val_fraction=0,
                 eos_token="<|im_end|>", progress=False)
    assert m2["eos_id"] == qwen_like.convert_tokens_to_ids("<|im_end|>")


def test_bos_follows_the_family(tmp_path, small_corpus, tokenizer_dir) -> None:
    from tokenizers import processors
    from transformers import AutoTokenizer

    llama_like = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Llama-3 style: the tokenizer's own post-processor puts <|begin_of_text|> (here <|bos|>) first.
    llama_like.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", llama_like.bos_token_id)])
    m = prepare([str(small_corpus)], llama_like, tmp_path / "d", seq_len=8, val_fraction=0, progress=False)
    assert m["add_bos"] and m["bos_id"] == llama_like.bos_token_id
    arr = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][0]["file"], dtype="<u2")
    assert arr[0] == m["bos_id"] and (arr == m["bos_id"]).sum() == m["splits"]["train"]["documents"]
    off = prepare([str(small_corpus)], llama_like, tmp_path / "e", seq_len=8, val_fraction=0,
                  add_bos=False, progress=False)
    assert not off["add_bos"] and off["bos_id"] is None


def test_v1_directory_still_loads(tmp_path) -> None:
    tokens = np.arange(50, dtype="<u2")
    tokens.tofile(tmp_path / "train.bin")
    v1 = {"version": "1.0", "pipeline": "data_prep", "dtype": "uint16", "eos_id": 0, "bos_id": None,
          "tokenizer": {"vocab_size": 64, "name_or_path": "x", "dir": "tokenizer"}, "seq_len": 8,
          "splits": {"train": {"file": "train.bin", "tokens": 50, "documents": 3, "bytes": 100,
                               "max_token_id": 49, "sha256": "ab"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(v1))
    m = load_manifest(tmp_path)
    assert m["version"] == "2.0" and m["converted_from_version"] == "1.0" and m["add_bos"] is False
    [shard] = m["splits"]["train"]["shards"]
    assert shard == {"file": "train.bin", "index": None, "tokens": 50, "documents": 3, "sha256": "ab",
                     "max_token_id": 49}
    assert m["splits"]["train"]["tokens"] == 50
    (tmp_path / "train.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ManifestError, match="truncated or corrupt"):
        load_manifest(tmp_path)


def test_finalize_without_a_run_is_a_clear_error(tmp_path, capsys) -> None:
    assert prepare_main(["--out", str(tmp_path), "--finalize"]) == 2
    assert "nothing to finalize" in capsys.readouterr().err


def test_worker_processes_give_identical_shards(tmp_path, small_corpus, tokenizer) -> None:
    # datatrove's process pool: the pipeline steps are pickled to the workers and back.
    kw = dict(seq_len=32, val_fraction=0.1, tasks=2, progress=False)
    one = prepare([str(small_corpus)], tokenizer, tmp_path / "w1", workers=1, **kw)
    two = prepare([str(small_corpus)], tokenizer, tmp_path / "w2", workers=2, **kw)
    for split in ("train", "val"):
        assert two["splits"][split] == one["splits"][split]  # sha256 of every shard included


def test_slurm_and_ray_executors(tmp_path, small_corpus, tokenizer, monkeypatch) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    launched = {}

    def fake_run(self):  # no sbatch here: check what would be submitted
        launched.update(tasks=self.tasks, partition=self.partition, logging_dir=self.logging_dir.path,
                        steps=[type(s).__name__ for s in self.pipeline])

    monkeypatch.setattr(SlurmPipelineExecutor, "run", fake_run)
    kw = dict(seq_len=8, tasks=6, progress=False)
    with pytest.raises(ValueError, match="--executor slurm needs --slurm-partition"):
        prepare([str(small_corpus)], tokenizer, tmp_path / "s", executor="slurm", **kw)
    status = prepare([str(small_corpus)], tokenizer, tmp_path / "s", executor="slurm",
                     executor_options={"partition": "cpu"}, overwrite=True, **kw)
    assert launched["tasks"] == 6 and launched["partition"] == "cpu"
    assert launched["steps"] == ["ReadCorpus", "TokenizeToShards"]
    assert launched["logging_dir"].endswith(".prepare/datatrove")
    assert status["complete"] is False and status["missing_tasks"] == list(range(6))
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the `ray` package: pip install"):
            prepare([str(small_corpus)], tokenizer, tmp_path / "r", executor="ray", **kw)


def test_huge_document_is_encoded_in_pieces_with_the_same_tokens(tmp_path, corpus_dir, tokenizer, split_docs,
                                                                 monkeypatch) -> None:
    """One document far over the encode limit (a 50 MB line took 5.3 GB in one encode call): encoded in
    pieces cut at whitespace runs, it gives exactly the tokens of a direct encode of the whole."""
    import data_prep.pipeline as pipeline
    from tokenizers import Tokenizer

    text = " ".join(p.read_text() for p in sorted(Path(corpus_dir).iterdir())[:2]).replace("\n\n", "\n  \n")
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
    monkeypatch.setattr(pipeline, "MAX_ENCODE_CHARS", 20_000)  # the pieces path, at test size
    assert len(pipeline._pieces(text, 20_000)) > 5
    prepare([str(tmp_path / "one.jsonl")], tokenizer, tmp_path / "d", seq_len=64, val_fraction=0.0, progress=False)
    ref = Tokenizer.from_file(str(REPO / "tests/assets/tokenizer/tokenizer.json")).encode(text, add_special_tokens=False)
    (doc,) = split_docs(tmp_path / "d")["train"]
    assert doc[:-1].tolist() == ref.ids and doc[-1] == tokenizer.eos_token_id


def test_binary_file_named_txt_is_refused(tmp_path, tokenizer) -> None:
    from data_prep.readers import CorpusError

    rng = np.random.default_rng(0)
    (tmp_path / "notes.txt").write_bytes(b"a real first paragraph\n\n" + rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(CorpusError, match=r"notes.txt \(byte \d+\) does not look like text: [\d,]+ undecodable"):
        prepare([str(tmp_path / "notes.txt")], tokenizer, tmp_path / "d", seq_len=64, val_fraction=0.0, progress=False)
    # a few stray bytes in real text are replaced and counted, not refused
    (tmp_path / "latin.txt").write_bytes(("caf\xe9 ".encode("latin-1") + b"ordinary words " * 20 + b"\n\n") * 5)
    m = prepare([str(tmp_path / "latin.txt")], tokenizer, tmp_path / "d2", seq_len=8, val_fraction=0.0, progress=False)
    assert m["stats"]["decode_replacements"] == 5
