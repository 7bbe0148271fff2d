"""lm-eval's own CLI on our exports, offline on local files, from a directory outside the repository.

The command the README documents:

    lm_eval --model hf --model_args pretrained=CKPT/hf --tasks llmstack \\
        --include_path $(python -m eval.tasks) --metadata data_dir=DIR --device cpu

must give the scores `python -m eval.harness` gives on the same weights and files (lm-eval's own
numbers are the independent reference here: the harness adds nothing to acc / acc_norm).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.errors import EvalError
from eval.taskspec import LOCAL_TASK_PREFIX, TASK_YAML_DIR, TASKS

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO / "tests" / "assets" / "eval"
LM_EVAL = Path(sys.executable).parent / "lm_eval"


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf_home"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def exported(checkpoint, tokenizer, tmp_path_factory) -> Path:
    """CKPT/hf as training writes it: the native export of the harness fixture's weights."""
    from modeling import DecoderForCausalLM
    from modeling.hf_export import export_hf

    out = tmp_path_factory.mktemp("export") / "hf"
    export_hf(DecoderForCausalLM.from_pretrained(checkpoint / "model"), out, tokenizer=tokenizer, max_length=128)
    return out


def test_lm_eval_cli_offline_from_any_directory_matches_eval_harness(exported, harness_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sys.executable, "-m", "eval.tasks"], cwd=elsewhere, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and Path(where.stdout.strip()) == TASK_YAML_DIR
    cmd = [str(LM_EVAL), "--model", "hf", "--model_args", f"pretrained={exported}", "--tasks", "llmstack",
           "--include_path", where.stdout.strip(), "--metadata", f"data_dir={EVAL_DATA}", "--device", "cpu",
           "--batch_size", "8", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=elsewhere, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shadow" not in proc.stderr.lower() and "overwrit" not in proc.stderr.lower()
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    ours = harness_run["payload"]["results"]
    for name in TASKS:
        r = theirs[f"{LOCAL_TASK_PREFIX}{name}"]
        for metric in ("acc", "acc_norm"):
            assert r[f"{metric},none"] == pytest.approx(ours[name][metric], abs=1e-9), (name, metric)
            assert r[f"{metric}_stderr,none"] == pytest.approx(ours[name][f"{metric}_stderr"], abs=1e-9)


def test_local_tasks_sit_beside_lm_eval_builtins_without_shadowing(caplog):
    """`--include_path eval/tasks` next to lm-eval's ~15k tasks: our names are new, theirs stay theirs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with caplog.at_level(logging.WARNING):
        manager = TaskManager(include_path=str(TASK_YAML_DIR))
    for name in TASKS:
        assert name in manager.all_tasks and f"{LOCAL_TASK_PREFIX}{name}" in manager.all_tasks
        assert Path(lm_eval.__file__).parent in manager.task_index[name].yaml_path.parents  # still lm-eval's own
    assert "llmstack" in manager.all_tags
    assert not [r for r in caplog.records if "duplicate" in r.getMessage().lower() or "overwrit" in r.getMessage().lower()]


def test_data_dir_from_the_environment_and_a_clear_error_without_one(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmstack_local_data", TASK_YAML_DIR / "local_data.py")
    local_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_data)
    monkeypatch.delenv(local_data.DATA_DIR_ENV, raising=False)
    with pytest.raises(EvalError, match=r"--metadata data_dir=DIR.*LLMSTACK_EVAL_DATA_DIR"):
        local_data.load(data_file="ARC-Easy-test.jsonl", question_field="question", version=1.0)
    monkeypatch.setenv(local_data.DATA_DIR_ENV, str(EVAL_DATA))
    ds = local_data.load(data_file="ARC-Easy-test.jsonl", question_field="question", pretrained="x", version=1.0)
    assert len(ds["test"]) == 16 and ds["test"][0]["choices"]["text"] == ["leaves", "roots", "flowers", "seeds"]
