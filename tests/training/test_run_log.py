"""training/run_log.py: the one writer and the one reader of <out_dir>/log.jsonl."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import run_log

REPO = Path(__file__).resolve().parents[2]


def _records():
    return [
        {"type": "config", "run_name": "t", "max_iters": 4, "tokens_per_iter": 1024, "start_iter": 0},
        {"type": "train", "iter": 1, "loss": 5.5, "lr": 1e-4, "grad_norm": None, "mfu": None},
        {"type": "eval", "iter": 2, "val_loss": 5.0, "val_ppl": 148.4, "time_ms": 12.5},
        {"type": "eval_harness", "iter": 2, "tasks": {"arc_easy": {"acc": 0.25, "acc_norm": 0.3}}, "time_ms": 9.0},
        {"type": "checkpoint", "iter": 2, "path": "ckpt/iter_000002", "reason": "interval", "time_ms": 3.0, "bytes": 10},
    ]


def test_round_trip_keeps_every_field_and_the_line_format(tmp_path):
    writer = run_log.RunLogWriter(run_log.log_path(tmp_path))
    assert writer.begin(start_iter=0) is None  # nothing to move aside
    before = time.time()
    written = [writer.write(r) for r in _records()]
    log = run_log.read(tmp_path)
    assert log.path == tmp_path / "log.jsonl" and log.skipped == []
    assert log.records == written
    for original, record in zip(_records(), log.records):
        assert list(record)[:2] == ["type", "time"] and before - 1 <= record["time"] <= time.time() + 1
        assert {k: v for k, v in record.items() if k != "time"} == original
    # the bytes: one json.dumps line per record, in order, newline-terminated
    assert (tmp_path / "log.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in written)
    assert log.config["run_name"] == "t" and [r["iter"] for r in log.of_type("eval")] == [2]


def test_a_truncated_last_line_is_skipped_and_named(tmp_path):
    writer = run_log.RunLogWriter(tmp_path / "log.jsonl")
    for r in _records():
        writer.write(r)
    whole = (tmp_path / "log.jsonl").read_text()
    (tmp_path / "log.jsonl").write_text(whole[: whole.rindex("\n", 0, len(whole) - 1) + 20])  # the kill
    log = run_log.read(tmp_path / "log.jsonl")
    assert [r["type"] for r in log.records] == ["config", "train", "eval", "eval_harness"]
    assert len(log.skipped) == 1 and log.skipped[0].line == 5 and log.skipped[0].kind == "unreadable"


def test_the_reader_skips_and_classifies_what_is_not_a_record(tmp_path):
    (tmp_path / "log.jsonl").write_text('\n[1, 2]\n{"no_type": 1}\n{"type": "train", "iter": 3}\nnot json\n')
    log = run_log.read(tmp_path)
    assert log.records == [{"type": "train", "iter": 3}] and log.config == {}
    assert [(s.line, s.kind) for s in log.skipped] == [(1, "empty"), (2, "not_a_record"), (3, "not_a_record"),
                                                        (5, "unreadable")]
    with pytest.raises(FileNotFoundError, match="no run log at .*log.jsonl"):
        run_log.read(tmp_path / "elsewhere")


def test_resume_cuts_the_log_back_and_a_fresh_run_moves_it_aside(tmp_path):
    path = tmp_path / "log.jsonl"
    writer = run_log.RunLogWriter(path)
    for r in _records() + [{"type": "train", "iter": 3, "loss": 4.0}]:
        writer.write(r)
    lines = path.read_text().splitlines()
    with open(path, "a") as f:
        f.write('{"type": "train", "it')  # the killed run's last, cut line
    assert writer.begin(start_iter=2) is None
    assert path.read_text().splitlines() == lines[:-1]  # iteration 3 and the cut line gone, the rest as it was

    old = path.read_text()
    os.utime(path, (1_700_000_000, 1_700_000_000))
    aside = writer.begin(start_iter=0)
    assert aside == tmp_path / "log.1700000000.jsonl" and aside.read_text() == old and not path.exists()


def test_unknown_record_types_are_refused_by_the_writer(tmp_path):
    with pytest.raises(ValueError, match="'trian' is unknown.*RECORD_TYPES"):
        run_log.RunLogWriter(tmp_path / "log.jsonl").write({"type": "trian", "iter": 1})
    assert not (tmp_path / "log.jsonl").exists()


def test_every_record_type_written_in_training_is_registered():
    """An independent look at the sources: every "type" literal a record is built with is in RECORD_TYPES."""
    import re

    found = set()
    for path in list((REPO / "training").glob("*.py")) + list((REPO / "eval").glob("*.py")):
        found |= set(re.findall(r'\{"type": "(\w+)"', path.read_text()))
    assert found and found <= set(run_log.RECORD_TYPES), found - set(run_log.RECORD_TYPES)


def test_find_run_dir_walks_up_from_a_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "iter_000004"
    ckpt.mkdir(parents=True)
    assert run_log.find_run_dir(ckpt) is None
    (tmp_path / "run" / "log.jsonl").write_text("")
    assert run_log.find_run_dir(ckpt) == tmp_path / "run"
    assert run_log.find_run_dir(ckpt, max_up=1) is None


def test_tracker_metric_names():
    record = {"type": "eval_harness", "iter": 8, "tasks": {"arc_easy": {"acc": 0.25}}, "time_ms": 9.0,
              "path": "x", "none": None, "flag": True}
    assert run_log.tracker_metrics(record) == {"eval_harness/tasks/arc_easy/acc": 0.25, "eval_harness/time_ms": 9.0,
                                               "eval_harness/flag": True}
    assert run_log.tracker_metrics({"type": "train", "iter": 3, "loss": 2.0}) == {"train/loss": 2.0}


def test_eval_reads_run_logs_without_importing_torch():
    code = ("import sys, training.run_log, eval.runinfo; "
            "assert not {'torch', 'accelerate', 'deepspeed'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
