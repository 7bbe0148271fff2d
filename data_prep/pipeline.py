"""The datatrove pipeline `prepare` runs: one task = read a share of the corpus -> token shards.

    [ReadCorpus, TokenizeToShards]   run by a datatrove executor (Local / Slurm / Ray) as N tasks

ReadCorpus (a datatrove reader step) yields task `rank`'s documents (`sources.shard_units`: every
N-th file, a 1/N share of each dataset) as datatrove `Document`s, with metadata["split"] set when
the source pins one. Our readers do the parsing: they read local paths and fsspec URLs (hf://,
s3://) with .zst/.gz streamed through fsspec, split .txt into paragraphs, and fail with one-line
errors on bad records instead of skipping them silently.

TokenizeToShards encodes batches of documents with the Rust tokenizer (`encode_batch_fast`),
routes each document to train/val by a keyed hash of its text (`shards.doc_to_val`), appends the
separator, writes bounded-size shards (`shards.ShardSet`), stops at the task's token budget, and
finally writes DIR/.prepare/tasks/TTTTT.json, the task's record. A task is all or nothing: an
interrupted one is rerun from its start (its shards are deterministic, so the result is the same
bytes) and datatrove's completion markers (DIR/.prepare/datatrove/completions/) skip finished
ones. The task that finds every record present writes manifest.json (`manifest.finalize`).

The console (`route_datatrove_console`): datatrove's task logger prints at INFO on stderr the pipeline's
description when a task starts and a stats block when it ends, per task and again for the run. Those
stay in its files (DIR/.prepare/datatrove/logs/task_NNNNN.log at DEBUG, stats/); the console gets
warnings and errors from anyone, and one line per finished task from TokenizeToShards.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils import logging as datatrove_logging
from datatrove.utils.logging import logger

from .atomic import atomic_write_json
from .readers import ReadStats
from .shards import CRASH_ENV, ShardSet, SimulatedCrash, doc_to_val, pack_flat, to_arrays
from .sources import ReadOptions, Unit, shard_units

STATE_DIR = ".prepare"  # run settings, task records, datatrove logs and completion markers
# Console lines: "INFO data_prep.pipeline: task 00003 done: ...", "WARNING datatrove.executor.base: ..."
CONSOLE_FORMAT = "<level>{level}</level> {name}: <level>{message}</level>"


def _to_console(record: dict) -> bool:
    """Warnings and errors from anyone, plus the lines a step marks `progress` (logger.bind(progress=True)).
    Not the exception a task failed with: datatrove logs it (with every frame's variables: in the task's
    log file) and re-raises it, and whoever ran the task reports it (prepare's `error: ...`)."""
    if record["exception"] is not None and record["name"].startswith("datatrove.executor"):
        return False
    return record["level"].no >= logger.level("WARNING").no or bool(record["extra"].get("progress"))


def _console_sink() -> None:
    logger.add(sys.stderr, level="DEBUG", filter=_to_console, format=CONSOLE_FORMAT,
               colorize=datatrove_logging.DATATROVE_COLORIZE_LOGS)


def _setup_default_logger() -> None:
    """datatrove's default logger (between tasks, after the run) with our console filter."""
    logger.remove()
    _console_sink()


def _add_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    """datatrove.utils.logging.add_task_logger with our console sink: the task's log file as datatrove
    writes it (DEBUG, datatrove's format), stderr through `_to_console` instead of everything at INFO."""
    logger.remove()
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    node_prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    logger.add(logfile, colorize=datatrove_logging.DATATROVE_COLORIZE_LOG_FILES, level="DEBUG",
               format=f"{node_prefix}{{time:YYYY-MM-DD HH:mm:ss.SSS}} | <level>{{level: <8}}</level> | "
                      "{name}:{function}:{line} - <level>{message}</level>")
    _console_sink()
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


def route_datatrove_console() -> None:
    """Swap datatrove's two logger set-ups (the task's, and the default one that close_task_logger restores)
    for ours. Called when this module is imported: every process that runs a task imports it before the
    task starts (a pool worker or a Slurm/Ray task unpickles the pipeline's steps from here)."""
    import datatrove.executor.base as executor_base

    if hasattr(executor_base, "add_task_logger") and hasattr(datatrove_logging, "setup_default_logger"):
        executor_base.add_task_logger = _add_task_logger
        datatrove_logging.setup_default_logger = _setup_default_logger
        _setup_default_logger()


route_datatrove_console()


def task_record_path(out: Path, task: int) -> Path:
    return out / STATE_DIR / "tasks" / f"{task:05d}.json"


class ReadCorpus(PipelineStep):
    """Task `rank`'s documents. Counts records, blank records and undecodable bytes."""

    name = "read corpus"
    type = "📖 - READER"

    def __init__(self, units: list[Unit], options: ReadOptions) -> None:
        super().__init__()
        self.units, self.options = units, options
        self.read_stats = ReadStats()
        self.records = self.skipped_empty = 0

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # Per task: a worker process may run several tasks with the same step object.
        self.read_stats, self.records, self.skipped_empty = ReadStats(), 0, 0
        for unit in shard_units(self.units, rank, world_size):
            reader = unit.reader(self.options, self.read_stats)
            for row, text in enumerate(reader.documents()):
                self.records += 1
                if text is None:
                    self.skipped_empty += 1
                    continue
                self.stat_update("documents")
                yield Document(text=text, id=f"{unit.label}/{row}", metadata={"split": unit.split})


# Characters per encode call. One huge document (a 50 MB single line) took 5.3 GB in the tokenizer's
# Rust structures; longer documents are encoded in pieces cut where a whitespace run starts.
MAX_ENCODE_CHARS = 1_000_000
_PIECE_CUT = re.compile(r"(?<=\S)(?=\s)")


def _pieces(text: str, limit: int) -> list[str]:
    """`text` cut into pieces of about `limit` characters, each cut where a whitespace run begins (after
    a non-space). Byte-level BPE pre-tokenizers (GPT-2, LLaMA-3, Qwen) split there themselves, so
    the pieces encode to exactly the tokens of the whole; a text with no such place stays whole."""
    pieces, start = [], 0
    while len(text) - start > limit:
        m = _PIECE_CUT.search(text, start + limit // 2, start + limit)
        if m is None:
            m = _PIECE_CUT.search(text, start + limit)
            if m is None:
                break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def encode_bounded(backend: Any, texts: list[str], np_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """encode_batch_fast over `texts` -> (lengths, flat ids), documents over MAX_ENCODE_CHARS in pieces."""
    if all(len(t) <= MAX_ENCODE_CHARS for t in texts):
        return to_arrays(backend.encode_batch_fast(texts, add_special_tokens=False), np_dtype)
    lengths, flats = [], []
    for text in texts:
        pieces = _pieces(text, MAX_ENCODE_CHARS) if len(text) > MAX_ENCODE_CHARS else [text]
        n = 0
        for piece in pieces:  # one piece at a time: memory stays bounded by a piece
            piece_lengths, piece_flat = to_arrays(backend.encode_batch_fast([piece], add_special_tokens=False),
                                                  np_dtype)
            n += int(piece_lengths[0])
            flats.append(piece_flat)
        lengths.append(n)
    return np.asarray(lengths, dtype=np.int64), np.concatenate(flats) if flats else np.zeros(0, np_dtype)


class TokenizeToShards(PipelineStep):
    """Documents -> token shards of task `rank` + its record; the last task writes the manifest."""

    name = "tokenize -> token shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, out: str, tokenizer_json: str, reader: ReadCorpus, *, dtype: str, eos_id: int,
                 bos_id: int | None, splits: list[str], seed: int, val_fraction: float,
                 shard_tokens: int, task_budget: int | None, batch_chars: int, threads: int,
                 progress: bool = True) -> None:
        super().__init__()
        self.progress = progress  # one console line per finished task
        self.out, self.tokenizer_json, self.reader = out, tokenizer_json, reader
        self.dtype, self.eos_id, self.bos_id = dtype, eos_id, bos_id
        self.splits, self.seed, self.val_fraction = splits, seed, val_fraction
        self.shard_tokens, self.task_budget = shard_tokens, task_budget
        self.batch_chars, self.threads = batch_chars, threads

    def _batches(self, data: DocumentsPipeline) -> Iterator[list[Document]]:
        batch: list[Document] = []
        chars = 0
        for doc in data:
            batch.append(doc)
            chars += len(doc.text)
            if chars >= self.batch_chars:
                yield batch
                batch, chars = [], 0
        if batch:
            yield batch

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.threads > 0:
            # Before the first encode: Rayon sizes its pool once per process. With W tasks in
            # parallel on C cores each gets C/W threads instead of W pools of C fighting.
            os.environ["RAYON_NUM_THREADS"] = str(self.threads)
        from tokenizers import Tokenizer

        t0, cpu0 = time.perf_counter(), time.process_time()  # process CPU: Rayon threads included
        backend = Tokenizer.from_str(self.tokenizer_json)
        out = Path(self.out)
        np_dtype = np.dtype(self.dtype).newbyteorder("<")
        extra = 1 + (self.bos_id is not None)
        shards = {s: ShardSet(out, s, rank, np_dtype.itemsize, self.shard_tokens) for s in self.splits}
        crash_at, _, crash_mode = os.environ.get(CRASH_ENV, "").partition(":")
        train_tokens, budget_reached, batches = 0, False, 0
        for batch in self._batches(data):
            texts = [d.text for d in batch]
            lengths, flat = encode_bounded(backend, texts, np_dtype)
            to_val = np.array([
                d.metadata["split"] == "val" if d.metadata.get("split") else
                doc_to_val(self.seed, d.text, self.val_fraction) for d in batch
            ], dtype=bool)
            if "val" not in shards:
                to_val[:] = False
            packed_len = lengths + extra
            if self.task_budget is not None:
                # Document granularity: keep documents up to the one that reaches the budget.
                cum = np.cumsum(np.where(to_val, 0, packed_len))
                hit = int(np.searchsorted(cum, self.task_budget - train_tokens, side="left"))
                if hit < len(batch):
                    keep = hit + 1
                    lengths, packed_len, to_val = lengths[:keep], packed_len[:keep], to_val[:keep]
                    flat = flat[: int(lengths.sum())]
                    budget_reached = True
            tok_val = np.repeat(to_val, lengths)
            for split, sel, tsel in (("train", ~to_val, ~tok_val), ("val", to_val, tok_val)):
                if split in shards and sel.any():
                    shards[split].write(pack_flat(lengths[sel], flat[tsel], self.eos_id, self.bos_id),
                                        packed_len[sel])
            train_tokens = shards["train"].tokens
            self.stat_update("tokens", value=int(packed_len.sum()))
            batches += 1
            if crash_at and batches == int(crash_at):
                if crash_mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise SimulatedCrash(f"{CRASH_ENV}: simulated crash after {batches} batches")
            if budget_reached:
                break
        record = {
            "task": rank,
            "tasks": world_size,
            "splits": {s: shards[s].close() for s in self.splits},
            "records": self.reader.records,
            "skipped_empty": self.reader.skipped_empty,
            "decode_replacements": self.reader.read_stats.replacements,
            "decode_replacement_examples": self.reader.read_stats.examples,
            "budget": self.task_budget,
            "budget_reached": budget_reached,
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
        }
        path = task_record_path(out, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)  # the task's shards are complete once this exists
        if self.progress:
            done = sum(1 for _ in path.parent.glob("*.json"))  # every node's, on a shared directory
            documents, tokens = (sum(getattr(shards[s], n) for s in self.splits) for n in ("documents", "tokens"))
            logger.bind(progress=True).info(f"task {rank:05d} done: {documents:,} documents, {tokens:,} tokens in "
                                            f"{record['seconds']:.1f} s ({done}/{world_size} tasks done)")
        from .manifest import finalize

        finalize(out, only_if_complete=True)
