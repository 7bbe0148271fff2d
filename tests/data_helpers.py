"""Data directories in the on-disk contract (manifest v2), written directly with numpy.

Tests of the loader and of training use these instead of `prepare`'s output so they do not depend on
the writer; tests/data_prep also runs the loader on real `prepare` output, where the two sides meet.
Not a test module (imported by tests; tests/ is on sys.path via tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

EOS, BOS, VOCAB = 0, 1, 500


def random_documents(rng: np.random.Generator, n: int, max_len: int = 70) -> list[np.ndarray]:
    """Document bodies: ids in [2, VOCAB), never EOS or BOS (so EOS marks exactly the document ends)."""
    return [rng.integers(2, VOCAB, size=int(rng.integers(1, max_len))) for _ in range(n)]


def write_data_dir(root: Path, splits: dict[str, list[list[np.ndarray]]], *, bos: bool = False,
                   index: bool = True, dtype: str = "uint16") -> Path:
    """The on-disk contract (manifest v2): DIR/{split}/NNNNN.ds, NNNNN.ds.index, manifest.json last.

    splits: {split: [shard: [document body, ...], ...]}; each document is stored as (BOS) body EOS.
    """
    root.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype("<u2" if dtype == "uint16" else "<u4")
    manifest_splits = {}
    for split, shards in splits.items():
        (root / split).mkdir(exist_ok=True)
        entries = []
        for n, docs in enumerate(shards):
            stored = [np.concatenate([[BOS] if bos else [], d, [EOS]]).astype(np_dtype) for d in docs]
            tokens = np.concatenate(stored) if stored else np.zeros(0, np_dtype)
            name = f"{split}/{n:05d}.ds"
            tokens.tofile(root / name)
            if index:
                np.cumsum([len(d) for d in stored], dtype=np.uint64).astype("<u8").tofile(root / f"{name}.index")
            entries.append({"file": name, "index": f"{name}.index" if index else None, "tokens": int(tokens.size),
                            "documents": len(docs), "sha256": hashlib.sha256(tokens.tobytes()).hexdigest(),
                            "max_token_id": int(tokens.max()) if tokens.size else -1})
        manifest_splits[split] = {"tokens": sum(e["tokens"] for e in entries),
                                  "documents": sum(e["documents"] for e in entries),
                                  "max_token_id": max(e["max_token_id"] for e in entries), "shards": entries}
    manifest = {"pipeline": "data_prep", "version": "2.0", "dtype": dtype,
                "tokenizer": {"name_or_path": "test", "vocab_size": VOCAB, "sha256": "t" * 64, "eos_token_id": EOS},
                "eos_id": EOS, "bos_id": BOS if bos else None, "splits": manifest_splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
