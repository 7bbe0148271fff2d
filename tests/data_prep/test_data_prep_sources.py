"""Readers and input resolution: documents, resume positions, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep import readers
from data_prep.readers import CorpusError, ReadStats, decode_utf8
from data_prep.sources import Cursor, ReadOptions, iter_chunks, resolve_inputs


def read_all(inputs, options=ReadOptions(), stats=None, **kw) -> list[str]:
    units, _ = resolve_inputs([str(i) for i in inputs], options)
    return [t for c in iter_chunks(units, options, stats or ReadStats(), **kw) for t in c.texts]


TRICKY = (
    b"\n\n  \nFirst para line 1\n  indented line 2   \n\n\n"
    b"Second \xc3\xa9t\xc3\xa9 caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\n"
    b" \t \n"
    b"Third with bad bytes \xff\xfe here\r\n"
    b"still third\r\n\r\n"
    b"  Fourth starts indented\n"
    b"\n   \n\t\n"
    b"Fifth at EOF without newline"
)


def test_paragraphs_match_reference_on_corpus(corpus_dir: Path, paragraphs) -> None:
    path = corpus_dir / "sonnets.txt"
    assert read_all([path]) == paragraphs(path.read_text(encoding="utf-8"))


def test_block_boundaries_never_change_documents(tmp_path: Path, monkeypatch, paragraphs) -> None:
    path = tmp_path / "tricky.txt"
    path.write_bytes(TRICKY * 3)
    expected = paragraphs(TRICKY.decode("utf-8", "replace") * 3)
    for block in (1, 2, 3, 7, 64, 1 << 20):
        monkeypatch.setattr(readers, "BLOCK_SIZE", block)
        stats = ReadStats()
        assert read_all([path], stats=stats) == expected, block
        assert stats.replacements == 6  # \xff and \xfe, three times
    for mode in ("line", "document"):
        ref = read_all([path], ReadOptions(sample_by=mode))
        for block in (1, 5, 64):
            monkeypatch.setattr(readers, "BLOCK_SIZE", block)
            assert read_all([path], ReadOptions(sample_by=mode)) == ref


def test_huge_blank_runs_and_long_lines_stay_linear(tmp_path: Path, monkeypatch) -> None:
    import time

    path = tmp_path / "odd.txt"
    path.write_bytes(b"a\n" + b" \n" * 300_000 + b"   " * 100_000 + b"\n\nb" + b"x" * 2_000_000)
    monkeypatch.setattr(readers, "BLOCK_SIZE", 1 << 16)
    t0 = time.perf_counter()
    docs = read_all([path])
    assert time.perf_counter() - t0 < 10  # a backtracking separator would take hours here
    assert docs == ["a", "b" + "x" * 2_000_000]


def test_line_and_document_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\n\n  two  \n \nthree")
    assert read_all([path], ReadOptions(sample_by="line")) == ["one", "  two  ", "three"]
    assert read_all([path], ReadOptions(sample_by="document")) == ["one\r\n\n  two  \n \nthree"]


def test_decode_counts_replacements_like_python() -> None:
    data = b"ok \xff\xfe mid \xe6\x97 cut \xc3"
    text, n = decode_utf8(data)
    assert text == data.decode("utf-8", "replace")
    assert n == text.count("\ufffd") == 4


def _resume_everywhere(inputs, options=ReadOptions()) -> None:
    """Stopping after any chunk and resuming from its cursor gives exactly the same documents."""
    units, _ = resolve_inputs([str(i) for i in inputs], options)
    full = [t for c in iter_chunks(units, options, ReadStats()) for t in c.texts]
    chunks = list(iter_chunks(units, options, ReadStats(), chunk_chars=50))
    assert len(chunks) > 3
    for k, chunk in enumerate(chunks):
        cursor = Cursor.from_json(json.loads(json.dumps(chunk.cursor.to_json())))
        head = [t for c in chunks[: k + 1] for t in c.texts]
        # Fresh units, as in a new process.
        units2, _ = resolve_inputs([str(i) for i in inputs], options)
        tail = [t for c in iter_chunks(units2, options, ReadStats(), start=cursor) for t in c.texts]
        assert head + tail == full, k


def test_resume_txt_jsonl_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_bytes(TRICKY)
    rows = [{"text": f"doc {i} " + "x" * (i % 13), "id": i} for i in range(40)]
    rows[5]["text"] = ""  # empty records are skipped, not documents
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet", row_group_size=7)
    _resume_everywhere([tmp_path])
    docs = read_all([tmp_path / "b.jsonl"])
    assert docs == [r["text"] for r in rows if r["text"]]
    assert read_all([tmp_path / "c.parquet"]) == docs


@pytest.mark.parametrize("streaming", [False, True])
def test_resume_hub_dataset(streaming: bool) -> None:
    import datasets

    from data_prep.sources import Unit

    rows = [f"row {i}" for i in range(30)]

    def make():  # a fresh dataset object, as a new process would load it
        ds = datasets.Dataset.from_dict({"text": rows})
        return ds.to_iterable_dataset(num_shards=3) if streaming else ds

    options = ReadOptions()
    chunks = list(iter_chunks([Unit("hub", "mem", None, dataset=make())], options, ReadStats(), chunk_chars=20))
    for k in (0, 2, 5):
        cursor = Cursor.from_json(json.loads(json.dumps(chunks[k].cursor.to_json())))
        if streaming and k == 2:
            assert "state" in cursor.pos  # resumes from the datasets iterator state
        units = [Unit("hub", "mem", None, dataset=make())]
        tail = [t for c in iter_chunks(units, options, ReadStats(), start=cursor) for t in c.texts]
        assert [t for c in chunks[: k + 1] for t in c.texts] + tail == rows


def test_missing_text_field_names_available_fields(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"content": "hi", "id": 1}\n')
    with pytest.raises(CorpusError, match=r"no field 'text'; available fields: \['content', 'id'\]"):
        read_all([tmp_path / "a.jsonl"])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(CorpusError, match=r"no column 'text'; available columns: \['body'\]"):
        read_all([tmp_path / "b.parquet"])
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"story": ["a"]}).save_to_disk(str(saved))
    with pytest.raises(CorpusError, match=r"no field 'text'; available fields: \['story'\]"):
        read_all([saved])
    assert read_all([saved], ReadOptions(text_field="story")) == ["a"]


def test_bad_jsonl_line_and_non_text_field(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CorpusError, match="not valid JSON"):
        read_all([tmp_path / "a.jsonl"])
    (tmp_path / "b.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(CorpusError, match="holds int, not text"):
        read_all([tmp_path / "b.jsonl"])


def test_file_manifest_pins_splits(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.txt").write_text("train doc\n\nanother")
    (tmp_path / "data" / "v.jsonl").write_text('{"text": "val doc"}\n')
    (tmp_path / "files.jsonl").write_text(
        '{"path": "data/t.txt"}\n{"path": "data/v.jsonl", "split": "validation"}\n'
    )
    units, desc = resolve_inputs([str(tmp_path / "files.jsonl")], ReadOptions())
    assert [(u.path.name, u.split) for u in units] == [("t.txt", None), ("v.jsonl", "val")]
    assert desc[0]["kind"] == "file_manifest"
    (tmp_path / "bad.jsonl").write_text('{"path": "data/missing.txt"}\n')
    with pytest.raises(CorpusError, match="missing.txt does not exist"):
        resolve_inputs([str(tmp_path / "bad.jsonl")], ReadOptions())


def test_dataset_dict_splits_are_respected(tmp_path: Path, monkeypatch) -> None:
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
        "validation": datasets.Dataset.from_dict({"text": ["c"]}),
        "test": datasets.Dataset.from_dict({"text": ["held out"]}),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    units, _ = resolve_inputs([str(tmp_path / "dd")], ReadOptions())
    assert [(u.label.rsplit("[", 1)[1], u.split) for u in units] == [("train]", "train"), ("validation]", "val")]

    # The Hub path: load_dataset returns a DatasetDict (a dict subclass, which must not be
    # mistaken for one split) or, streaming, an IterableDatasetDict.
    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        d = datasets.DatasetDict({"train": dd["train"], "validation": dd["validation"]})
        if streaming:
            d = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in d.items()})
        return d if split is None else d[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for streaming in (False, True):
        options = ReadOptions(streaming=streaming)
        units, _ = resolve_inputs(["someone/tiny"], options)
        assert [u.split for u in units] == ["train", "val"]
        assert read_all(["someone/tiny"], options) == ["a", "b", "c"]
    units, _ = resolve_inputs(["someone/tiny"], ReadOptions(split="train"))
    assert [u.split for u in units] == [None]  # one split given: validation is carved by hash
    units, _ = resolve_inputs(["someone/tiny"], ReadOptions(split="validation", val_split="train"))
    assert [(u.label, u.split) for u in units] == [("someone/tiny[validation]", "train"),
                                                   ("someone/tiny[train]", "val")]
    units, _ = resolve_inputs([str(tmp_path / "dd")], ReadOptions(split="train", val_split="test"))
    assert [u.split for u in units] == ["train", "val"]
    with pytest.raises(CorpusError, match=r"no split 'dev'; available splits: \['train', 'validation', 'test'\]"):
        resolve_inputs([str(tmp_path / "dd")], ReadOptions(val_split="dev"))


def test_unreachable_hub_dataset_is_a_clear_error() -> None:
    with pytest.raises(CorpusError, match="could not load dataset 'someone/not-here'.*offline"):
        resolve_inputs(["someone/not-here"], ReadOptions())


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_inputs([str(tmp_path / "nope.txt")], ReadOptions())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="no .* files under directory"):
        resolve_inputs([str(tmp_path / "empty")], ReadOptions())
    with pytest.raises(CorpusError, match="unsupported file type '.csv'"):
        resolve_inputs([str(tmp_path / "empty" / "notes.csv")], ReadOptions())


def test_compressed_files_globs_and_urls(tmp_path: Path) -> None:
    import gzip

    import zstandard

    rows = [{"text": f"doc {i} " + "y" * (i % 7)} for i in range(25)]
    payload = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(TRICKY))
    texts = [r["text"] for r in rows]
    assert read_all([tmp_path / "a.jsonl.zst"]) == texts
    assert read_all([tmp_path / "b.jsonl.gz"]) == texts
    assert read_all([str(tmp_path / "*.jsonl.*")]) == texts + texts  # a glob, sorted
    assert read_all([f"file://{tmp_path}/b.jsonl.gz"]) == texts  # an fsspec URL
    units, desc = resolve_inputs([str(tmp_path)], ReadOptions())
    assert [(u.kind, u.compression) for u in units] == [("jsonl", "zstd"), ("jsonl", "gzip"), ("txt", "gzip")]
    assert read_all([tmp_path / "c.txt.gz"]) == read_all_plain(tmp_path, TRICKY)
    _resume_everywhere([tmp_path / "a.jsonl.zst"])  # cursors work on streams that cannot seek
    with pytest.raises(CorpusError, match="matches no"):
        resolve_inputs([str(tmp_path / "*.parquet")], ReadOptions())
    with pytest.raises(CorpusError, match="holds no"):
        resolve_inputs([f"file://{tmp_path}/*.csv"], ReadOptions())


def read_all_plain(tmp_path: Path, data: bytes) -> list[str]:
    (tmp_path / "plain").mkdir(exist_ok=True)
    (tmp_path / "plain" / "c.txt").write_bytes(data)
    return read_all([tmp_path / "plain" / "c.txt"])


def test_units_shard_over_tasks_and_pickle(tmp_path: Path) -> None:
    import pickle

    import datasets

    from data_prep.sources import shard_units

    for k in range(5):
        (tmp_path / f"f{k}.jsonl").write_text(json.dumps({"text": f"file {k}"}) + "\n")
    datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(10)]}).save_to_disk(str(tmp_path / "ds"))
    units, _ = resolve_inputs([str(tmp_path / "f0.jsonl"), str(tmp_path / "f1.jsonl"), str(tmp_path / "f2.jsonl"),
                               str(tmp_path / "f3.jsonl"), str(tmp_path / "f4.jsonl"), str(tmp_path / "ds")],
                              ReadOptions())
    units = pickle.loads(pickle.dumps(units))  # as a datatrove worker receives them
    got = []
    for rank in range(3):
        mine = shard_units(units, rank, 3)
        docs = [t for c in iter_chunks(mine, ReadOptions(), ReadStats()) for t in c.texts]
        got.append(docs)
    assert got[0][:2] == ["file 0", "file 3"] and got[1][:2] == ["file 1", "file 4"] and got[2][0] == "file 2"
    assert sorted(d for g in got for d in g) == sorted([f"file {k}" for k in range(5)] + [f"row {i}" for i in range(10)])


@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_split_over_tasks(streaming: bool) -> None:
    import datasets

    from data_prep.sources import Unit, shard_units

    rows = [f"row {i}" for i in range(30)]
    ds = datasets.Dataset.from_dict({"text": rows})
    unit = Unit("hub", "mem", None, dataset=ds.to_iterable_dataset(num_shards=4) if streaming else ds)
    parts = [[t for c in iter_chunks(shard_units([unit], r, 3), ReadOptions(), ReadStats()) for t in c.texts]
             for r in range(3)]
    assert all(parts) and sorted(t for p in parts for t in p) == sorted(rows)  # disjoint, complete
