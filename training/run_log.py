"""The run log `<out_dir>/log.jsonl`: its record types, its one writer and its one reader
(docs/formats.md, Run log). Standard library only, like checkpoint_layout.py: eval/ reads run logs
without importing torch, accelerate or DeepSpeed.

On disk: one JSON object per line (json.dumps defaults: ASCII, ", " and ": " separators), "type"
first, then "time" (Unix seconds, 3 decimals, stamped by the writer), then the record's own fields
(RECORD_TYPES). Rank 0 alone writes it, one line per record, flushed as it is written.

Across sessions of one out_dir (RunLogWriter.begin):
    fresh run, a log already there   the old log is moved aside to log.<its mtime>.jsonl (never mixed)
    resume from iteration N          the log is cut back to records with iter <= N (the killed run logged
                                     past its checkpoint), then a new "config" record with start_iter = N
Readers take what a killed run leaves: a line cut short (or empty, or not a JSON object with a
"type") is skipped and reported with its line number, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

LOG_NAME = "log.jsonl"

# Every record type a run writes: what it holds and which part writes it. A record may carry more
# fields than listed (config: all of run_info); readers look fields up by name and tolerate absence.
RECORD_TYPES: dict[str, str] = {
    "config": "run_info (recipe, model, n_params, batch, seq_len, tokens_per_iter, max_iters, precision, device, "
              "world_size, data, mem_kind, ...), start_iter, resumed_from when resumed; first record of every "
              "session (training/callbacks.py JsonlLogger)",
    "train": "iter, loss, lr, grad_norm, tokens, tokens_per_sec, tokens_per_sec_per_gpu, tflops, mfu, time_ms "
             "(per iteration over the log window, evals and checkpoints excluded), mem_allocated_gb, mem_peak_gb, "
             "mem_reserved_gb, skipped_steps (policy skip), nonfinite_loss (when true) (TrainMetrics)",
    "loss_spike": "iter, loss, zscore (TrainMetrics, with a LossSpikes detector)",
    "grad_norms": "iter, layers {layer name: pre-clip gradient norm} (LayerGradNorms)",
    "eval": "iter, val_loss, val_ppl, time_ms (Validation)",
    "checkpoint": "iter, path, reason (interval | preempted | final), time_ms, bytes (Checkpointer)",
    "eval_harness": "iter, tasks {task: {metric: value}}, time_ms (HarnessEval)",
    "profile": "iter, path (the trace directory) (Profiler)",
    "nonfinite": "iter, policy, skipped_steps, message; the run then stops (training/trainer.py)",
    "skipped_step": "iter, skipped_steps; an optimizer step skipped under nonfinite_policy=skip (training/trainer.py)",
}


def log_path(run_dir: Union[str, os.PathLike]) -> Path:
    return Path(run_dir) / LOG_NAME


def resolve(path: Union[str, os.PathLike]) -> Path:
    """A run directory (holding log.jsonl) or the log file itself -> the log file; FileNotFoundError
    naming both forms when there is none."""
    p = Path(path)
    log = log_path(p) if p.is_dir() else p
    if not log.is_file():
        raise FileNotFoundError(
            f"no run log at {log}: pass a run directory holding {LOG_NAME} (the trainer's out_dir) or the file itself"
        )
    return log


def find_run_dir(start: Path, max_up: int = 3) -> Optional[Path]:
    """The nearest of start and its first `max_up` ancestors holding log.jsonl: the training run dir."""
    for candidate in [start, *list(start.parents)[:max_up]]:
        if log_path(candidate).is_file():
            return candidate
    return None


def config_value(obj: Any, key: str) -> Any:
    """First value of `key` in a (nested) config record: the trainer flattens run_info into the
    record, older or other writers may nest it under "config" or "recipe"."""
    if isinstance(obj, dict):
        if key in obj and obj[key] is not None:
            return obj[key]
        for v in obj.values():
            found = config_value(v, key)
            if found is not None:
                return found
    return None


def finite_number(x: Any) -> float | None:
    """x as a float when it is a finite number (not a bool), else None: what a plot or summary can use."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def tracker_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics the accelerate trackers get for a record: `<type>/<field>` for every number (a bool
    counts), nested dicts as `<type>/<field>/<key>...` (eval_harness tasks, grad_norms layers); iter is
    the step, not a metric; text and nulls are left out."""
    out: dict[str, Any] = {}

    def walk(prefix: str, fields: dict[str, Any]) -> None:
        for k, v in fields.items():
            if isinstance(v, dict):
                walk(f"{prefix}/{k}", v)
            elif isinstance(v, (int, float)):
                out[f"{prefix}/{k}"] = v

    walk(str(record["type"]), {k: v for k, v in record.items() if k not in ("type", "iter")})
    return out


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class SkippedLine:
    line: int  # 1-based
    kind: str  # "empty" | "unreadable" (not JSON: a line cut by a kill) | "not_a_record" (no object with a "type")
    detail: str = ""  # the JSON error for "unreadable"


def _parse(text: str, lineno: int) -> Union[dict[str, Any], SkippedLine]:
    text = text.strip()
    if not text:
        return SkippedLine(lineno, "empty")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        return SkippedLine(lineno, "unreadable", exc.msg)
    if not isinstance(rec, dict) or "type" not in rec:
        return SkippedLine(lineno, "not_a_record")
    return rec


def _lines(path: Path) -> Iterator[str]:
    # json.dumps escapes line breaks inside values, so a record is one line; a byte that is not UTF-8
    # (a torn write) only spoils its own line
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from f


@dataclass
class RunLog:
    """A run log as read: its records in file order and the lines skipped."""

    path: Optional[Path] = None
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]

    @property
    def configs(self) -> list[dict[str, Any]]:
        """One per session: a resumed run appends a new one."""
        return self.of_type("config")

    @property
    def config(self) -> dict[str, Any]:
        """The last config record (the current session's), {} when there is none."""
        configs = self.configs
        return configs[-1] if configs else {}


def read(path: Union[str, os.PathLike]) -> RunLog:
    """The records of a run log (a run directory or the file: see resolve), skipping what is not a
    record (see SkippedLine) so that a log cut short by a kill still reads."""
    log = resolve(path)
    run = RunLog(path=log)
    for lineno, text in enumerate(_lines(log), start=1):
        parsed = _parse(text, lineno)
        (run.skipped if isinstance(parsed, SkippedLine) else run.records).append(parsed)
    return run


# ------------------------------------------------------------------------------------------------ writing
class RunLogWriter:
    """Appends records to one run log; rank 0 owns one (training/callbacks.py JsonlLogger)."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)

    def begin(self, start_iter: int) -> Optional[Path]:
        """Ready the file for a session (module docstring): a resume at start_iter > 0 cuts the log back
        to its checkpoint; a fresh run moves an old log aside. Returns where an old log went, if moved."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return None
        if start_iter > 0:
            self.truncate_after(start_iter)
            return None
        aside = self.path.with_name(f"log.{int(self.path.stat().st_mtime)}.jsonl")  # log.<mtime>.jsonl
        os.replace(self.path, aside)
        return aside

    def truncate_after(self, iteration: int) -> None:
        """Keep the config records and the records up to `iteration` (the lines as they are); drop the
        rest and every line that is not a record. Atomic: a temp file renamed over the log."""
        kept = []
        for lineno, text in enumerate(_lines(self.path), start=1):
            rec = _parse(text, lineno)
            if isinstance(rec, dict) and (rec["type"] == "config" or rec.get("iter", 0) <= iteration):
                kept.append(text.rstrip("\n"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record as one line, flushed; returns it as written (with its time stamp)."""
        kind = record.get("type")
        if kind not in RECORD_TYPES:
            raise ValueError(f"run log record type {kind!r} is unknown; add it to RECORD_TYPES in training/run_log.py "
                             f"(known: {', '.join(RECORD_TYPES)})")
        stamped = {"type": kind, "time": round(time.time(), 3), **{k: v for k, v in record.items() if k != "type"}}
        with open(self.path, "a") as f:
            f.write(json.dumps(stamped) + "\n")
            f.flush()
        return stamped
