"""`python -m data_prep.prepare`'s console: one line per task and our summary; datatrove's pipeline
description and stats blocks only in its log files; a failing task is one `error:` line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
TASK_LINE = re.compile(r"^INFO data_prep\.pipeline: task (\d{5}) done: ([\d,]+) documents, ([\d,]+) tokens in "
                       r"[\d.]+ s \((\d+)/(\d+) tasks done\)$")
# What datatrove's own stderr handler printed at INFO: the pipeline's description and the stats blocks.
DATATROVE_NOISE = ("PIPELINE", "Stats:", "Launching pipeline", "Processing done", "tasks completed")


def _prepare(out: Path, *args: str, inputs: tuple[str, ...] = (str(ASSETS / "corpus"),)) -> subprocess.CompletedProcess:
    # without the suite's TOKENIZERS_PARALLELISM=false, which prepare warns about (on one more line)
    env = {**{k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"},
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "data_prep.prepare", "--input", *inputs, "--tokenizer",
                           str(ASSETS / "tokenizer"), "--out", str(out), "--seq-len", "64", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_console_has_a_line_per_task_and_no_datatrove_blocks(tmp_path: Path) -> None:
    out = tmp_path / "data"
    res = _prepare(out, "--val-fraction", "0.05", "--tasks", "3", "--workers", "2")  # tasks in pool workers too
    assert res.returncode == 0, res.stderr
    assert not any(noise in res.stderr for noise in DATATROVE_NOISE), res.stderr
    lines = res.stderr.strip().splitlines()
    matches = [TASK_LINE.match(line) for line in lines]
    assert all(matches), res.stderr  # nothing else on stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(int(m[1]) for m in matches) == list(range(manifest["stats"]["tasks"]))
    assert sum(int(m[2].replace(",", "")) for m in matches) == sum(s["documents"] for s in manifest["splits"].values())
    assert sum(int(m[3].replace(",", "")) for m in matches) == sum(s["tokens"] for s in manifest["splits"].values())
    assert sorted(int(m[4]) for m in matches) == [1, 2, 3] and {m[5] for m in matches} == {"3"}
    # datatrove's full account is still written, per task
    logs = out / ".prepare" / "datatrove" / "logs"
    for task in range(3):
        text = (logs / f"task_{task:05d}.log").read_text()
        assert "PIPELINE" in text and f"Stats: Task {task}" in text and f"task {task:05d} done" in text


def test_no_progress_leaves_the_summary_only(tmp_path: Path) -> None:
    res = _prepare(tmp_path / "data", "--val-fraction", "0.05", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and "wrote" in res.stdout


def test_a_failing_task_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello world"}\n{"text": 5}\n')
    res = _prepare(tmp_path / "data", "--val-fraction", "0", inputs=(str(bad),))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {bad} (byte 24): field 'text' holds int, not text. Pass --text-field naming a string field."]
    # the traceback, with its frames' variables, is in the task's log file
    log = (tmp_path / "data" / ".prepare" / "datatrove" / "logs" / "task_00000.log").read_text()
    assert "Traceback" in log and "CorpusError" in log
