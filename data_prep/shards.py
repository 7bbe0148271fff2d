"""Token shards on disk: packing documents, appending chunks, committing the resume state.

`ShardWriter` owns DIR/{split}.bin.partial and DIR/prepare_state.json during a `prepare` run. The
state file only ever claims bytes that were fsync'ed first, so after any interruption the partial
shards hold at least the committed bytes, and a resume truncates whatever came after.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json
from .determinism import unit_interval_array
from .readers import CorpusError
from .sources import Chunk

STATE_NAME = "prepare_state.json"
# Test hook: "N" raises after chunk N (0-based, this process) is written but before it is
# committed; "N:kill" SIGKILLs the process at that point instead (a real, unclean interruption).
CRASH_ENV = "DATA_PREP_TEST_CRASH_AFTER_CHUNKS"


class SimulatedCrash(RuntimeError):
    """Raised by the CRASH_ENV test hook."""


def bin_name(split: str) -> str:
    return f"{split}.bin"


def partial_name(split: str) -> str:
    return f"{split}.bin.partial"


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


def _crash_hook() -> tuple[int, str]:
    raw = os.environ.get(CRASH_ENV, "")
    if not raw:
        return -1, ""
    n, _, mode = raw.partition(":")
    return int(n), mode or "raise"


class ShardWriter:
    """Routes each encoded chunk to its split, appends it to the partial shards, commits state.

    The state file only ever claims bytes that were fsync'ed first, so after any interruption the
    partial shards hold at least the committed bytes, and resume truncates the rest.
    """

    def __init__(self, out: Path, state: dict[str, Any], *, eos_id: int, bos_id: int | None,
                 seed: int, val_fraction: float, commit_every_s: float) -> None:
        self.out, self.state = out, state
        self.eos_id, self.bos_id = eos_id, bos_id
        self.seed, self.val_fraction, self.commit_every_s = seed, val_fraction, commit_every_s
        self.splits = list(state["splits"])
        self.session_tokens = 0
        self.crash_at, self.crash_mode = _crash_hook()
        self.files = {split: self._open(split, info["bytes"]) for split, info in state["splits"].items()}
        self._last_commit = time.perf_counter()

    def _open(self, split: str, committed: int) -> Any:
        path = self.out / partial_name(split)
        path.touch()
        size = path.stat().st_size
        if size < committed:
            raise CorpusError(
                f"{path} has {size} bytes but {STATE_NAME} committed {committed}: the partial output "
                "was damaged. Re-run with --overwrite to start over."
            )
        f = open(path, "r+b")
        f.truncate(committed)  # drop what was written after the last commit (a crash mid-chunk)
        f.seek(committed)
        return f

    def _route(self, chunk: Chunk, lengths: np.ndarray, flat: np.ndarray
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if len(self.splits) == 1 or all(s == "train" for s in chunk.splits):
            return {"train": (lengths, flat)}
        first = self.state["documents"]  # global index of this chunk's first document
        doc_index = np.arange(first, first + lengths.size)
        hashed_val = unit_interval_array(self.seed, doc_index) < self.val_fraction
        fixed = np.array([s or "" for s in chunk.splits])
        to_val = np.where(fixed == "", hashed_val, fixed == "val")  # the source's split wins
        token_to_val = np.repeat(to_val, lengths)
        return {
            "train": (lengths[~to_val], flat[~token_to_val]),
            "val": (lengths[to_val], flat[token_to_val]),
        }

    def write(self, chunk: Chunk, encoded: tuple[np.ndarray, np.ndarray], index: int) -> None:
        for split, (lengths, flat) in self._route(chunk, *encoded).items():
            if not lengths.size:
                continue
            arr = pack_flat(lengths, flat, self.eos_id, self.bos_id)
            self.files[split].write(memoryview(arr).cast("B"))
            info = self.state["splits"][split]
            info["tokens"] += int(arr.size)
            info["bytes"] += int(arr.nbytes)
            info["documents"] += int(lengths.size)
            info["max_token_id"] = max(info["max_token_id"], int(arr.max()))
            self.session_tokens += int(arr.size)
        if index == self.crash_at:  # this chunk is in the .partial files but not committed
            for f in self.files.values():
                f.flush()
            if self.crash_mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise SimulatedCrash(f"{CRASH_ENV}: simulated crash in chunk {index}")
        st = self.state
        st["documents"] += len(chunk.texts)
        st["records"] += chunk.records
        st["skipped_empty"] += chunk.skipped_empty
        st["replacements"] += chunk.replacements
        st["chunks"] += 1
        st["cursor"] = chunk.cursor.to_json()
        if time.perf_counter() - self._last_commit >= self.commit_every_s:
            self.commit()

    def commit(self) -> None:
        # fsync is the expensive part of a commit, hence commit_every_s rather than every chunk.
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())  # durable before the state file claims these bytes
        atomic_write_json(self.out / STATE_NAME, self.state)
        self._last_commit = time.perf_counter()

    def close(self) -> None:
        for f in self.files.values():
            f.close()
