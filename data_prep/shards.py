"""Token shards on disk: packing documents, the train/val rule, and writing bounded-size shards.

A shard is datatrove's TokenizedFile format, written with datatrove's own `TokenizedFile`:

    DIR/{split}/TTTTT_PPPPP.ds          tokens, raw little-endian uint16 | uint32
    DIR/{split}/TTTTT_PPPPP.ds.index    uint64 little-endian cumulative document ends (in tokens)

(task TTTTT, part PPPPP). `ShardSet` cuts a task's token stream into shards of at most
`shard_tokens` tokens at document boundaries (a single longer document gets a shard of its own),
computes each shard's sha256, token and document counts and max token id WHILE writing (so
finishing never re-reads the data), and writes under a hidden temporary name that is renamed into
place when the shard is complete. Field-by-field description: docs/formats.md, section 1.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

# Test hook: "N" makes a task raise after writing N tokenization batches; "N:kill" SIGKILLs the
# process there instead (a real, unclean interruption, as a preempted node would be).
CRASH_ENV = "DATA_PREP_TEST_CRASH_AFTER_BATCHES"


class SimulatedCrash(RuntimeError):
    """Raised by the CRASH_ENV test hook."""


def shard_name(task: int, part: int) -> str:
    return f"{task:05d}_{part:05d}.ds"


def doc_to_val(seed: int, text: str, val_fraction: float) -> bool:
    """Whether a document goes to validation: a keyed hash of its text alone.

    Never the document's position: the split is then the same whatever the number of tasks,
    machines or workers, and whatever order the files are read in. (Identical documents land in
    the same split, which also keeps exact duplicates from straddling train and val.)
    """
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                        key=str(seed).encode())
    return int.from_bytes(h.digest(), "little") < val_fraction * 2.0**64


def to_arrays(encodings: list[Any], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """`tokenizers` Encodings -> (lengths int64 (D,), flat ids in `dtype` (sum(lengths),))."""
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    try:
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    except OverflowError:
        raise ValueError(
            f"a token id does not fit in {np.dtype(dtype).name}; the tokenizer produced ids beyond "
            "its reported length. Use --dtype uint32."
        ) from None
    return lengths, flat


def pack_flat(lengths: np.ndarray, flat: np.ndarray, eos_id: int, bos_id: int | None) -> np.ndarray:
    """Documents given as (lengths, concatenated ids) -> (BOS) doc_0 EOS (BOS) doc_1 EOS ...

    Vectorised: the body tokens are scattered into place with one boolean mask, the separators
    written at their computed positions.
    """
    extra = 1 + (bos_id is not None)
    out = np.empty(flat.size + extra * lengths.size, dtype=flat.dtype)
    ends = np.cumsum(lengths + extra)  # one past each document's EOS
    body = np.ones(out.size, dtype=bool)
    body[ends - 1] = False
    if bos_id is not None:
        body[ends - lengths - extra] = False
    out[body] = flat
    out[ends - 1] = eos_id
    if bos_id is not None:
        out[ends - lengths - extra] = bos_id
    return out


class _OpenShard:
    """One shard being written: datatrove's TokenizedFile plus what the manifest needs."""

    def __init__(self, split_dir: Path, name: str, itemsize: int) -> None:
        from datatrove.pipeline.tokens.tokenizer import TokenizedFile

        self.split_dir, self.name = split_dir, name
        self.tmp = f".{name}.tmp"
        self.file = TokenizedFile(str(split_dir), self.tmp, save_index=True, token_size=itemsize)
        self.sha = hashlib.sha256()
        self.tokens = self.documents = 0
        self.max_id = -1

    def write(self, packed: np.ndarray, doc_ends: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(packed)).cast("B")
        self.sha.update(data)  # hashed as written: finishing never re-reads the shard
        self.file.write_bytes(bytes(data), doc_ends=doc_ends.tolist())
        self.tokens += int(packed.size)
        self.documents += int(doc_ends.size)
        self.max_id = max(self.max_id, int(packed.max()))

    def close(self, split: str) -> dict[str, Any]:
        self.file.close()  # writes the .index
        for suffix in ("", ".index"):
            tmp = self.split_dir / f"{self.tmp}{suffix}"
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())  # durable before the task record claims the shard
            os.replace(tmp, self.split_dir / f"{self.name}{suffix}")
        return {
            "file": f"{split}/{self.name}",
            "index": f"{split}/{self.name}.index",
            "tokens": self.tokens,
            "documents": self.documents,
            "sha256": self.sha.hexdigest(),
            "max_token_id": self.max_id,
        }


class ShardSet:
    """A task's shards of one split: DIR/{split}/{task}_{part}.ds, at most `shard_tokens` each."""

    def __init__(self, out: Path, split: str, task: int, itemsize: int, shard_tokens: int) -> None:
        self.out, self.split, self.task = out, split, task
        self.itemsize, self.shard_tokens = itemsize, shard_tokens
        self.dir = out / split
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f".{task:05d}_*.tmp*"):  # left by an interrupted attempt
            stale.unlink()
        self.current: _OpenShard | None = None
        self.closed: list[dict[str, Any]] = []
        self.tokens = self.documents = 0

    def write(self, packed: np.ndarray, doc_lengths: np.ndarray) -> None:
        """Append whole documents (`doc_lengths` tokens each, separators included)."""
        ends = np.cumsum(doc_lengths)
        first_doc, first_tok = 0, 0
        while first_doc < ends.size:
            if self.current is None:
                self.current = _OpenShard(self.dir, shard_name(self.task, len(self.closed)), self.itemsize)
            room = self.shard_tokens - self.current.tokens
            # Documents that still fit in the current shard (by their end offset).
            last = int(np.searchsorted(ends, first_tok + room, side="right"))
            if last == first_doc:
                if self.current.tokens:
                    self._rotate()
                    continue
                last = first_doc + 1  # one document longer than a shard: it gets its own
            stop_tok = int(ends[last - 1])
            self.current.write(packed[first_tok:stop_tok], ends[first_doc:last] - first_tok)
            self.tokens += stop_tok - first_tok
            self.documents += last - first_doc
            first_doc, first_tok = last, stop_tok
            if self.current.tokens >= self.shard_tokens:
                self._rotate()

    def _rotate(self) -> None:
        assert self.current is not None
        self.closed.append(self.current.close(self.split))
        self.current = None

    def close(self) -> list[dict[str, Any]]:
        if self.current is not None and self.current.tokens:
            self._rotate()
        elif self.current is not None:  # opened but empty: drop its temporary files
            self.current.file.close()
            for p in self.dir.glob(f"{self.current.tmp}*"):
                p.unlink()
            self.current = None
        return self.closed
