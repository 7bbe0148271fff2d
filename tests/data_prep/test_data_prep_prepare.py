"""prepare: shard contents against independent tokenization, shards, splits, dtypes, resume, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.manifest import ManifestError, load_manifest
from data_prep.prepare import prepare
from data_prep.readers import CorpusError
from data_prep.shards import CRASH_ENV, SimulatedCrash

REPO = Path(__file__).resolve().parents[2]


def corpus_docs(corpus: Path, paragraphs) -> list[str]:
    """Documents of a .txt corpus in prepare's order (sorted files), by the reference splitter."""
    return [d for f in sorted(corpus.glob("*.txt")) for d in paragraphs(f.read_text(encoding="utf-8"))]


def reference_ids(tok, docs: list[str]) -> list[list[int]]:
    # The transformers wrapper, one document at a time: an independent path from prepare's
    # batched backend call.
    return [tok(d, add_special_tokens=False).input_ids for d in docs]


def concat(docs: list) -> np.ndarray:
    return np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)


def test_shards_equal_direct_tokenization(tmp_path, small_corpus, tokenizer, paragraphs, split_docs) -> None:
    m = prepare([str(small_corpus)], tokenizer, tmp_path / "d", seq_len=64, val_fraction=0.0,
                progress=False, chunk_chars=20_000)
    docs = corpus_docs(small_corpus, paragraphs)
    ref = reference_ids(tokenizer, docs)
    eos = tokenizer.eos_token_id
    assert list(m["splits"]) == ["train"]
    assert m["splits"]["train"]["documents"] == len(docs)
    assert m["splits"]["train"]["tokens"] == sum(len(r) + 1 for r in ref)
    [shard] = m["splits"]["train"]["shards"]
    train = np.fromfile(tmp_path / "d" / shard["file"], dtype="<u2")
    expected = np.fromiter((t for r in ref for t in r + [eos]), dtype=np.uint16)
    np.testing.assert_array_equal(train, expected)
    ends = np.fromfile(tmp_path / "d" / shard["index"], dtype="<u8")
    np.testing.assert_array_equal(ends, np.cumsum([len(r) + 1 for r in ref]))  # datatrove .index
    assert [d.tolist() for d in split_docs(tmp_path / "d")["train"]] == [r + [eos] for r in ref]
    assert m["dtype"] == "uint16" and m["eos_id"] == eos and m["seq_len"] == 64 and not m["add_bos"]


def test_decoding_a_stretch_gives_back_the_text(prepared, tokenizer, corpus_dir, paragraphs, in_val,
                                                split_docs) -> None:
    m = load_manifest(prepared)
    docs = corpus_docs(corpus_dir, paragraphs)
    train_docs = [d for d in docs if not in_val(d)]
    val_docs = [d for d in docs if in_val(d)]
    assert m["splits"]["train"]["documents"] == len(train_docs)
    assert m["splits"]["val"]["documents"] == len(val_docs)
    got = split_docs(prepared)
    for split, expected in (("train", train_docs), ("val", val_docs)):
        for k in (0, 1, len(expected) // 2, len(expected) - 1):
            assert got[split][k][-1] == m["eos_id"]
            assert tokenizer.decode(got[split][k][:-1].tolist()) == expected[k]


def test_manifest_and_self_contained_tokenizer(prepared, tokenizer) -> None:
    from transformers import AutoTokenizer

    from data_prep.manifest import file_sha256
    from data_prep.tokenizer import tokenizer_identity

    m = load_manifest(prepared, verify_hash=True)
    assert m["version"] == "2.0" and m["pipeline"] == "data_prep"
    assert m["tokenizer"]["vocab_size"] == len(tokenizer) == 2048
    for key in ("bos_id", "eos_id", "pad_id", "name_or_path", "sha256"):
        assert key in m["tokenizer"]
    for key in ("created_utc", "add_bos", "split_policy", "sources", "stats", "command", "warnings"):
        assert key in m
    for split, info in m["splits"].items():
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"])
        assert info["documents"] == sum(s["documents"] for s in info["shards"])
        for shard in info["shards"]:
            # sha256 computed while writing equals a fresh hash of the file
            assert shard["sha256"] == file_sha256(prepared / shard["file"])
            assert shard["file"].startswith(f"{split}/") and shard["index"] == shard["file"] + ".index"
    copy = AutoTokenizer.from_pretrained(str(prepared / m["tokenizer"]["dir"]))
    assert tokenizer_identity(copy)["sha256"] == m["tokenizer"]["sha256"]
    assert copy.eos_token_id == m["eos_id"]
    for split in m["splits"]:  # no temporaries left next to the shards
        assert not list((prepared / split).glob(".*"))
    assert m["sources"][0]["files"] == 18


def test_large_vocab_uses_uint32(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    n = 70_000
    vocab = {f"w{i}": i for i in range(n)}
    vocab["<unk>"], vocab["<eos>"] = n, n + 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    docs = [[69_999, 0, 65_535, 65_536], [12, 66_000], [n - 1] * 3]
    (tmp_path / "c.txt").write_text("\n\n".join(" ".join(f"w{i}" for i in d) for d in docs))
    m = prepare([str(tmp_path / "c.txt")], tok, tmp_path / "d", seq_len=4, val_fraction=0,
                progress=False)
    assert m["dtype"] == "uint32" and m["tokenizer"]["vocab_size"] == n + 2
    got = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][0]["file"], dtype="<u4")
    np.testing.assert_array_equal(got, [t for d in docs for t in d + [n + 1]])
    assert m["splits"]["train"]["max_token_id"] == n + 1
    with pytest.raises(ValueError, match=r"70002 tokens but uint16 holds ids up to 65535.*--dtype uint32"):
        prepare([str(tmp_path / "c.txt")], tok, tmp_path / "e", seq_len=4, val_fraction=0,
                dtype="uint16", progress=False)


def _run(corpus, tok, out, **kw):
    kw = {"seq_len": 64, "val_fraction": 0.1, "chunk_chars": 15_000, "progress": False, **kw}
    return prepare([str(corpus)], tok, out, **kw)


def test_shards_are_bounded_and_split_at_documents(tmp_path, small_corpus, tokenizer, split_docs) -> None:
    one = _run(small_corpus, tokenizer, tmp_path / "one")
    many = _run(small_corpus, tokenizer, tmp_path / "many", shard_tokens=3000)
    assert len(many["splits"]["train"]["shards"]) > 10
    for split in ("train", "val"):
        for key in ("tokens", "documents", "max_token_id"):
            assert many["splits"][split][key] == one["splits"][split][key]
        longest = max(len(d) for d in split_docs(tmp_path / "many")[split])
        assert all(s["tokens"] <= max(3000, longest) for s in many["splits"][split]["shards"])
        a, b = split_docs(tmp_path / "one")[split], split_docs(tmp_path / "many")[split]
        assert [d.tolist() for d in a] == [d.tolist() for d in b]  # same documents, same order
    load_manifest(tmp_path / "many", verify_hash=True)


def test_interrupted_task_reruns_to_identical_shards(tmp_path, small_corpus, tokenizer, monkeypatch) -> None:
    ref = _run(small_corpus, tokenizer, tmp_path / "ref", tasks=3)
    out = tmp_path / "out"
    monkeypatch.setenv(CRASH_ENV, "2")  # every task raises after its 2nd batch: task 0 dies
    with pytest.raises(SimulatedCrash):
        _run(small_corpus, tokenizer, out, tasks=3)
    assert not (out / "manifest.json").exists()
    assert list((out / "train").glob(".*.tmp*"))  # the interrupted task's partial shard
    with pytest.raises(ManifestError, match="unfinished run.*re-run the same prepare command"):
        load_manifest(out)
    monkeypatch.delenv(CRASH_ENV)
    m = _run(small_corpus, tokenizer, out, tasks=3)
    for split in ("train", "val"):
        assert m["splits"][split] == ref["splits"][split]  # sha256 of every shard included
    assert not list((out / "train").glob(".*"))


def test_concurrent_prepare_is_refused(tmp_path, small_corpus, tokenizer) -> None:
    out = tmp_path / "out"
    (out / ".prepare").mkdir(parents=True)
    lock = out / ".prepare" / "lock-node0"
    # POSIX locks belong to a process: the holder must be another one, as a second prepare would be.
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(lock)!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CorpusError, match="another prepare process .* is writing to"):
            _run(small_corpus, tokenizer, out)
    finally:
        holder.kill()
        holder.wait()


def test_resume_with_changed_arguments_is_refused(tmp_path, small_corpus, tokenizer, monkeypatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "1")
    with pytest.raises(SimulatedCrash):
        _run(small_corpus, tokenizer, tmp_path / "out")
    monkeypatch.delenv(CRASH_ENV)
    with pytest.raises(CorpusError, match=r"interrupted run with different settings \(changed: \['seed'\]\)"):
        _run(small_corpus, tokenizer, tmp_path / "out", seed=1)
    _run(small_corpus, tokenizer, tmp_path / "out", seed=1, overwrite=True)  # --overwrite starts over
    with pytest.raises(CorpusError, match="already holds a prepared dataset.*--overwrite"):
        _run(small_corpus, tokenizer, tmp_path / "out", seed=1)


def test_existing_splits_are_kept(tmp_path, tokenizer) -> None:
    import datasets

    train = [f"train story number {i}." for i in range(50)]
    val = [f"validation story {i}." for i in range(7)]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": train}),
        "validation": datasets.Dataset.from_dict({"text": val}),
    }).save_to_disk(str(tmp_path / "dd"))
    m = prepare([str(tmp_path / "dd")], tokenizer, tmp_path / "d", seq_len=8, val_fraction=0.5,
                progress=False)
    assert (m["splits"]["train"]["documents"], m["splits"]["val"]["documents"]) == (50, 7)
    got = np.fromfile(tmp_path / "d" / m["splits"]["val"]["shards"][0]["file"], dtype=np.uint16)
    ref = reference_ids(tokenizer, val)
    np.testing.assert_array_equal(got, [t for r in ref for t in r + [tokenizer.eos_token_id]])


def test_eos_override_and_bos(tmp_path, small_corpus, tokenizer) -> None:
    m = prepare([str(small_corpus)], tokenizer, tmp_path / "d", seq_len=8, val_fraction=0,
                eos_token="<|pad|>", add_bos=True, progress=False)
    assert m["eos_id"] == 2 and m["bos_id"] == 1 and m["tokenizer"]["eos_token"] == "<|pad|>"
    arr = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][0]["file"], dtype=np.uint16)
    assert arr[0] == 1 and arr[-1] == 2
    assert (arr == 1).sum() == (arr == 2).sum() == m["splits"]["train"]["documents"]
    assert tokenizer.eos_token == "<|endoftext|>"  # the caller's tokenizer is left alone
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "d" / "tokenizer")).eos_token == "<|pad|>"
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        prepare([str(small_corpus)], tokenizer, tmp_path / "e", seq_len=8, eos_token="<nope>",
                progress=False)


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, tokenizer) -> None:
    (tmp_path / "c.txt").write_bytes(b"good text\n\nbad \xff\xfe bytes\n\nmore \xc3 here")
    m = prepare([str(tmp_path / "c.txt")], tokenizer, tmp_path / "d", seq_len=4, val_fraction=0,
                progress=False)
    assert m["stats"]["decode_replacements"] == 3
    assert m["stats"]["decode_replacement_examples"]
    arr = np.fromfile(tmp_path / "d" / m["splits"]["train"]["shards"][0]["file"], dtype=np.uint16).tolist()
    assert tokenizer.decode(arr, skip_special_tokens=True) == "good textbad \ufffd\ufffd bytesmore \ufffd here"


def test_empty_corpus_and_missing_field(tmp_path, tokenizer) -> None:
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(CorpusError, match=r"corpus is empty: no documents .*1 records, all blank"):
        prepare([str(tmp_path / "blank.txt")], tokenizer, tmp_path / "d", seq_len=4, progress=False)
    assert not (tmp_path / "d" / "manifest.json").exists()
    (tmp_path / "x.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"no field 'text'; available fields: \['body'\]"):
        prepare([str(tmp_path / "x.jsonl")], tokenizer, tmp_path / "e", seq_len=4, progress=False)


def test_split_shorter_than_seq_len_warns(tmp_path, small_corpus, tokenizer) -> None:
    m = prepare([str(small_corpus)], tokenizer, tmp_path / "d", seq_len=100_000, val_fraction=0.01,
                progress=False)
    assert any("split 'val'" in w and "seq_len + 1 = 100001" in w for w in m["warnings"])


def test_bad_arguments(tmp_path, small_corpus, tokenizer) -> None:
    with pytest.raises(ValueError, match="val_fraction must be in"):
        prepare([str(small_corpus)], tokenizer, tmp_path, seq_len=8, val_fraction=1.0)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        prepare([str(small_corpus)], tokenizer, tmp_path, seq_len=0)
    with pytest.raises(ValueError, match=r"--node-rank must be in \[0, --num-nodes\)"):
        prepare([str(small_corpus)], tokenizer, tmp_path, seq_len=8, tasks=4, node_rank=2, num_nodes=2)
    with pytest.raises(ValueError, match="--num-nodes 3 > --tasks 2.*--tasks >= 3"):
        prepare([str(small_corpus)], tokenizer, tmp_path, seq_len=8, tasks=2, num_nodes=3)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        prepare([str(small_corpus)], tokenizer, tmp_path, seq_len=8, workers=0)
