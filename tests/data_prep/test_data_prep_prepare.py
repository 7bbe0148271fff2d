"""prepare: shard contents against independent tokenization, splits, dtypes, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.determinism import unit_interval
from data_prep.manifest import ManifestError, load_manifest
from data_prep.prepare import prepare
from data_prep.readers import CorpusError
from data_prep.shards import CRASH_ENV, STATE_NAME, SimulatedCrash

REPO = Path(__file__).resolve().parents[2]


def corpus_docs(corpus: Path, paragraphs) -> list[str]:
    """Documents of a .txt corpus in prepare's order (sorted files), by the reference splitter."""
    return [d for f in sorted(corpus.glob("*.txt")) for d in paragraphs(f.read_text(encoding="utf-8"))]


def reference_ids(tok, docs: list[str]) -> list[list[int]]:
    # The transformers wrapper, one document at a time: an independent path from prepare's
    # batched backend call.
    return [tok(d, add_special_tokens=False).input_ids for d in docs]


def test_shards_equal_direct_tokenization(tmp_path, small_corpus, tokenizer, paragraphs) -> None:
    m = prepare([str(small_corpus)], tokenizer, tmp_path / "d", seq_len=64, val_fraction=0.0,
                progress=False, chunk_chars=20_000)
    docs = corpus_docs(small_corpus, paragraphs)
    ref = reference_ids(tokenizer, docs)
    eos = tokenizer.eos_token_id
    assert list(m["splits"]) == ["train"]
    assert m["splits"]["train"]["documents"] == len(docs)
    assert m["splits"]["train"]["tokens"] == sum(len(r) + 1 for r in ref)
    train = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    expected = np.fromiter((t for r in ref for t in r + [eos]), dtype=np.uint16)
    np.testing.assert_array_equal(train, expected)
    assert m["dtype"] == "uint16" and m["eos_id"] == eos and m["seq_len"] == 64
    assert m["stats"]["chunks"] > 5


def test_decoding_a_stretch_gives_back_the_text(prepared, tokenizer, corpus_dir, paragraphs) -> None:
    m = load_manifest(prepared)
    docs = corpus_docs(corpus_dir, paragraphs)
    val_mask = [unit_interval(0, i) < 0.05 for i in range(len(docs))]
    train_docs = [d for d, v in zip(docs, val_mask) if not v]
    val_docs = [d for d, v in zip(docs, val_mask) if v]
    assert m["splits"]["train"]["documents"] == len(train_docs)
    assert m["splits"]["val"]["documents"] == len(val_docs)
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        arr = np.memmap(prepared / f"{split}.bin", dtype=np.uint16, mode="r")
        eos_at = np.flatnonzero(arr == m["eos_id"])
        assert len(eos_at) == len(split_docs)
        for k in (0, 1, len(split_docs) // 2, len(split_docs) - 1):
            lo = 0 if k == 0 else eos_at[k - 1] + 1
            assert tokenizer.decode(arr[lo : eos_at[k]].tolist()) == split_docs[k]


def test_manifest_and_self_contained_tokenizer(prepared, tokenizer) -> None:
    from transformers import AutoTokenizer

    from data_prep.manifest import file_sha256
    from data_prep.tokenizer import tokenizer_identity

    m = load_manifest(prepared, verify_hash=True)
    assert m["version"] == "1.0" and m["pipeline"] == "data_prep"
    assert m["tokenizer"]["vocab_size"] == len(tokenizer) == 2048
    for key in ("bos_id", "eos_id", "pad_id", "name_or_path", "sha256"):
        assert key in m["tokenizer"]
    for split, info in m["splits"].items():
        assert info["sha256"] == file_sha256(prepared / info["file"])
    copy = AutoTokenizer.from_pretrained(str(prepared / m["tokenizer"]["dir"]))
    assert tokenizer_identity(copy)["sha256"] == m["tokenizer"]["sha256"]
    assert copy.eos_token_id == m["eos_id"]
    assert not (prepared / STATE_NAME).exists()
    assert not list(prepared.glob("*.partial")) and not list(prepared.glob(".*"))  # no tmp, no lock
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
    got = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint32)
    np.testing.assert_array_equal(got, [t for d in docs for t in d + [n + 1]])
    assert m["splits"]["train"]["max_token_id"] == n + 1
    with pytest.raises(ValueError, match=r"70002 tokens but uint16 holds ids up to 65535.*--dtype uint32"):
        prepare([str(tmp_path / "c.txt")], tok, tmp_path / "e", seq_len=4, val_fraction=0,
                dtype="uint16", progress=False)


def _run(corpus, tok, out, **kw):
    return prepare([str(corpus)], tok, out, seq_len=64, val_fraction=0.1, chunk_chars=15_000,
                   commit_every_s=0, progress=False, **kw)


def test_encoder_processes_give_identical_shards(tmp_path, small_corpus, tokenizer) -> None:
    threads = _run(small_corpus, tokenizer, tmp_path / "threads")
    procs = _run(small_corpus, tokenizer, tmp_path / "procs", workers=2)
    for split in ("train", "val"):
        assert procs["splits"][split] == threads["splits"][split]  # sha256 included


def test_interrupt_and_resume_is_byte_identical(tmp_path, small_corpus, tokenizer, monkeypatch) -> None:
    ref = _run(small_corpus, tokenizer, tmp_path / "ref")
    out = tmp_path / "out"
    for crash_chunk in (3, 4):  # crash twice: the second time inside a resumed run
        monkeypatch.setenv(CRASH_ENV, str(crash_chunk))
        with pytest.raises(SimulatedCrash):
            _run(small_corpus, tokenizer, out)
        state = json.loads((out / STATE_NAME).read_text())
        partial = out / "train.bin.partial"
        # The crashed chunk's bytes were written but not committed: resume must drop them.
        assert partial.stat().st_size > state["splits"]["train"]["bytes"]
        assert not (out / "manifest.json").exists() and not (out / "train.bin").exists()
        with pytest.raises(ManifestError, match="prepare_state.json.*re-run the same prepare command"):
            load_manifest(out)
    monkeypatch.delenv(CRASH_ENV)
    m = _run(small_corpus, tokenizer, out)
    assert m["stats"]["resumed_from_document"] > 0
    for split in ("train", "val"):
        assert (out / f"{split}.bin").read_bytes() == (tmp_path / "ref" / f"{split}.bin").read_bytes()
        assert m["splits"][split] == ref["splits"][split]
    assert m["stats"]["documents"] == ref["stats"]["documents"]


def test_killed_process_resumes_byte_identical(tmp_path, small_corpus, tokenizer, tokenizer_dir) -> None:
    cmd = [sys.executable, "-m", "data_prep.prepare", "--input", str(small_corpus),
           "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out"), "--seq-len", "64",
           "--val-fraction", "0.1", "--chunk-chars", "15000", "--commit-every", "0", "--no-progress"]
    env = {**os.environ, CRASH_ENV: "5:kill", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "out" / STATE_NAME).exists()
    # Resume (in this process, to save a second interpreter start-up) with the same settings.
    m = _run(small_corpus, tokenizer_dir, tmp_path / "out")
    assert m["stats"]["resumed_from_document"] > 0
    _run(small_corpus, tokenizer, tmp_path / "ref")  # uninterrupted reference
    for split in ("train", "val"):
        assert (tmp_path / "out" / f"{split}.bin").read_bytes() == (tmp_path / "ref" / f"{split}.bin").read_bytes()


def test_crash_inside_finalize_resumes(tmp_path, small_corpus, tokenizer, monkeypatch) -> None:
    import data_prep.prepare as prep

    ref = _run(small_corpus, tokenizer, tmp_path / "ref")
    real_save = prep.save_tokenizer

    def broken_save(tok, out_dir):
        raise SimulatedCrash("disk full while copying the tokenizer")

    monkeypatch.setattr(prep, "save_tokenizer", broken_save)
    with pytest.raises(SimulatedCrash):
        _run(small_corpus, tokenizer, tmp_path / "out")
    assert (tmp_path / "out" / "train.bin").exists()  # shards renamed, manifest not yet written
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(prep, "save_tokenizer", real_save)
    m = _run(small_corpus, tokenizer, tmp_path / "out")
    assert m["splits"] == ref["splits"]


def test_concurrent_prepare_is_refused(tmp_path, small_corpus, tokenizer) -> None:
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".prepare.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CorpusError, match="another prepare process is writing to"):
            _run(small_corpus, tokenizer, out)


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
    got = np.fromfile(tmp_path / "d" / "val.bin", dtype=np.uint16)
    ref = reference_ids(tokenizer, val)
    np.testing.assert_array_equal(got, [t for r in ref for t in r + [tokenizer.eos_token_id]])


def test_eos_override_and_bos(tmp_path, small_corpus, tokenizer) -> None:
    m = prepare([str(small_corpus)], tokenizer, tmp_path / "d", seq_len=8, val_fraction=0,
                eos_token="<|pad|>", add_bos=True, progress=False)
    assert m["eos_id"] == 2 and m["bos_id"] == 1 and m["tokenizer"]["eos_token"] == "<|pad|>"
    arr = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
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
    arr = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16).tolist()
    assert tokenizer.decode(arr, skip_special_tokens=True) == "good textbad \ufffd\ufffd bytesmore \ufffd here"


def test_empty_corpus_and_missing_field(tmp_path, tokenizer) -> None:
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(CorpusError, match=r"corpus is empty: no documents .*1 records, all blank"):
        prepare([str(tmp_path / "blank.txt")], tokenizer, tmp_path / "d", seq_len=4, progress=False)
    assert not (tmp_path / "d" / STATE_NAME).exists()
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
