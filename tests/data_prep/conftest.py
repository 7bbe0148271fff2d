"""Fixtures for the data_prep tests: shipped assets, an offline Hub, one prepared corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CORPUS = ASSETS / "corpus"
TOKENIZER = ASSETS / "tokenizer"
# Two plays: ~270 KB, enough for many chunks while keeping each prepare run well under a second.
SMALL_PLAYS = ("macbeth.txt", "tempest.txt")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the network: Hub lookups fail at once instead of retrying for ~45 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tokenizer():
    from data_prep.tokenizer import load_tokenizer

    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("small_corpus")
    for name in SMALL_PLAYS:
        shutil.copy(CORPUS / name, d / name)
    return d


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """The whole shipped corpus prepared once (seq_len 128, 5% validation; v2 shards)."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare([str(CORPUS)], tokenizer, out, seq_len=128, val_fraction=0.05, progress=False)
    return out


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return TOKENIZER


@pytest.fixture(scope="session")
def paragraphs():
    """Independent reference for sample_by="paragraph" (a fixture, so no test imports conftest)."""
    return _paragraphs


@pytest.fixture(scope="session")
def in_val():
    """Independent reference for the train/val rule: blake2b-64 of the text keyed by str(seed)."""
    return _in_val


def _in_val(text: str, seed: int = 0, fraction: float = 0.05) -> bool:
    import hashlib

    digest = hashlib.blake2b(text.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


@pytest.fixture(scope="session")
def split_docs():
    """Reads a prepared v2 directory back: {split: [token array of each document, in shard order]}
    (separators included), from the shard files and their datatrove .index files."""
    return _split_docs


def _split_docs(out: Path) -> dict:
    import json

    import numpy as np

    m = json.loads((Path(out) / "manifest.json").read_text())
    dtype = np.dtype(m["dtype"]).newbyteorder("<")
    docs = {}
    for split, info in m["splits"].items():
        docs[split] = []
        for shard in info["shards"]:
            tokens = np.fromfile(Path(out) / shard["file"], dtype=dtype)
            ends = np.fromfile(Path(out) / shard["index"], dtype="<u8")
            assert ends.size == shard["documents"] and (ends.size == 0 or ends[-1] == tokens.size)
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            docs[split] += [tokens[a:b] for a, b in zip(starts, ends.astype(np.int64))]
    return docs


def _paragraphs(text: str) -> list[str]:
    """Groups of non-blank lines, joined by newlines, trailing whitespace removed."""
    docs, group = [], []
    for line in text.split("\n"):
        if line.strip(" \t\r\f\v"):
            group.append(line)
        elif group:
            docs.append("\n".join(group).rstrip())
            group = []
    if group:
        docs.append("\n".join(group).rstrip())
    return docs
