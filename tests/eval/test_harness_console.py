"""`python -m eval.harness`'s console: our lines (one per task) and the table; progress bars only with --verbose."""

from __future__ import annotations

import re
from pathlib import Path

EVAL_DATA = Path(__file__).resolve().parents[1] / "assets" / "eval"

TASKS = ("arc_easy", "arc_challenge", "openbookqa")
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) eval\.[\w.]+: ")
BAR = re.compile(r"\d+%\||it/s\]|examples/s\]")  # what a tqdm bar (datasets, transformers, lm-eval) prints


def test_console_is_our_lines_and_the_table(harness_run):
    stderr = harness_run["proc"].stderr
    assert not BAR.search(stderr) and "\r" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert all(OUR_LINE.match(line) for line in lines), stderr
    for task in TASKS:  # one line per task, ours
        assert sum(f"eval.taskspec: {task}: " in line for line in lines) == 1, stderr
    assert "| task | metric |" in harness_run["proc"].stdout


def test_verbose_shows_the_bars_and_lm_eval_messages(run_cli, checkpoint, tmp_path):
    proc = run_cli("eval.harness", str(checkpoint), "--data-dir", str(EVAL_DATA), "--output", str(tmp_path / "F.json"),
                   "--device", "cpu", "--tasks", "openbookqa", "--limit", "2", "--verbose",
                   env={"HF_HOME": str(tmp_path / "hf_home")})
    assert proc.returncode == 0, proc.stderr
    assert "Running loglikelihood requests" in proc.stderr and BAR.search(proc.stderr)
    assert "INFO lm_eval." in proc.stderr


def test_quiet_console_restores_every_setting():
    import importlib

    import datasets
    from transformers.utils import logging as transformers_logging

    from eval.harness import _LM_EVAL_TQDM_MODULES, quiet_console

    def state():
        return (datasets.utils.are_progress_bars_disabled(), transformers_logging.is_progress_bar_enabled(),
                __import__("logging").getLogger("lm_eval").level,
                [importlib.import_module(m).tqdm for m in _LM_EVAL_TQDM_MODULES])

    before = state()
    with quiet_console():
        inside = state()
        assert inside[0] and not inside[1] and inside[2] >= 30  # datasets off, transformers off, lm-eval >= WARNING
        assert all(bar is not original for bar, original in zip(inside[3], before[3]))
    assert state() == before
