"""Encoding chunks of documents into flat token arrays, in threads or in worker processes.

Both encoders turn a list of documents into (lengths, ids): `lengths[d]` tokens of document d,
all ids concatenated in one numpy array. Everything after that (routing to splits, EOS insertion,
writing) is vectorised numpy in the main process.

ThreadEncoder (default): `encode_batch_fast` on pool threads. The Rust encoder releases the GIL and
uses every core (Rayon); the one serial step is turning its output into numpy (the PyO3 `ids`
lists, ~40-80 ns/token), which overlaps the next chunk's encoding. Best up to ~8-16 cores.

ProcessEncoder (`--workers N`): N spawned processes, each encoding whole chunks with
`cores / N` Rayon threads and converting to numpy itself, so the Python-side conversion runs in
parallel too. Use it on many-core machines where one Python thread cannot keep up with Rayon.
This module imports only numpy and tokenizers, so spawned workers start quickly.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")
Encoded = tuple[np.ndarray, np.ndarray]  # (lengths int64 (D,), ids (sum(lengths),))


def to_arrays(encodings: list[Any], dtype: Any) -> Encoded:
    """`tokenizers` Encodings -> (lengths, flat ids in `dtype`)."""
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


class ThreadEncoder:
    def __init__(self, backend: Any, dtype: Any, depth: int = 2) -> None:
        self.backend, self.dtype, self.depth = backend, dtype, depth

    def _encode(self, texts: list[str]) -> Encoded:
        return to_arrays(self.backend.encode_batch_fast(texts, add_special_tokens=False), self.dtype)

    def executor(self) -> Executor:
        return ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="encode")

    def submit(self, pool: Executor, texts: list[str]) -> Future:
        return pool.submit(self._encode, texts)


_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str, threads: int) -> None:
    # Before the first encode: Rayon sizes its global pool from this on first use.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    from tokenizers import Tokenizer

    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(texts: list[str], dtype: str) -> Encoded:
    return to_arrays(_WORKER_TOKENIZER.encode_batch_fast(texts, add_special_tokens=False), np.dtype(dtype))


class ProcessEncoder:
    def __init__(self, backend: Any, dtype: Any, workers: int) -> None:
        self.tokenizer_json = backend.to_str()  # the exact pipeline, rebuilt in each worker
        self.dtype = np.dtype(dtype)
        self.workers = workers
        self.depth = 2 * workers  # keep every worker busy while results wait to be written
        self.threads = max(1, (os.cpu_count() or 1) // workers)

    def executor(self) -> Executor:
        # spawn, not fork: a forked child of a process whose Rayon pool already ran would have
        # tokenizers disable its parallelism (and fork with live threads is unsafe).
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.tokenizer_json, self.threads),
        )

    def submit(self, pool: Executor, texts: list[str]) -> Future:
        return pool.submit(_encode_in_worker, texts, self.dtype.str)


def encode_ahead(chunks: Iterable[T], texts_of: Any, encoder: ThreadEncoder | ProcessEncoder
                 ) -> Iterator[tuple[T, Encoded]]:
    """(chunk, encoded) in order, with up to `encoder.depth` chunks being encoded ahead.

    While the caller writes chunk k, the next chunks are read (in the caller's thread, when this
    generator pulls from `chunks`) and encoded concurrently. Two or more encodes in flight keep
    the cores busy through the tail of each batch, which a single call leaves partly idle.
    """
    pending: collections.deque[tuple[T, Future]] = collections.deque()
    with encoder.executor() as pool:
        try:
            for chunk in chunks:
                pending.append((chunk, encoder.submit(pool, texts_of(chunk))))
                if len(pending) > encoder.depth:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:  # the caller stopped early (error): drop queued work
                future.cancel()
