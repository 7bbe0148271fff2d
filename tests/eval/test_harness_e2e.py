"""End to end: `python -m eval.harness CKPT --data-dir DIR --output F.json --device cpu` on a tiny checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TASKS = ("arc_easy", "arc_challenge", "openbookqa")
FIXTURE_SIZES = {"arc_easy": 16, "arc_challenge": 13, "openbookqa": 12}


def test_results_json_has_every_task_with_plain_float_metrics(harness_run):
    results = harness_run["payload"]["results"]
    assert set(results) == set(TASKS)
    for task in TASKS:
        r = results[task]
        for metric in ("acc", "acc_norm", "acc_mean_logprob"):
            assert type(r[metric]) is float and 0.0 <= r[metric] <= 1.0, (task, metric, r[metric])
            assert type(r[f"{metric}_stderr"]) is float and r[f"{metric}_stderr"] > 0
        assert r["n"] == r["n_total"] == FIXTURE_SIZES[task]
        # lm-eval's stderr of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1)).
        p, n = r["acc"], r["n"]
        assert math.isclose(r["acc_stderr"], math.sqrt(p * (1 - p) / (n - 1)), rel_tol=1e-9)


def test_results_json_records_model_and_settings(harness_run, checkpoint):
    payload = harness_run["payload"]
    assert payload["schema"] == "llmstack.eval/1"
    assert payload["name"] == "tiny-run/iter_000008"
    model = payload["model"]
    assert model["kind"] == "training-checkpoint" and model["class"] == "LlamaForCausalLM"
    assert model["iter"] == 8 and model["tokens"] == 8 * 4096
    assert model["run_dir"] == str(checkpoint.parents[1])
    settings = payload["settings"]
    assert settings["device"] == "cpu" and settings["dtype"] == "float32" and settings["num_fewshot"] == 0
    assert settings["data"] == str(REPO / "tests" / "assets" / "eval")
    assert set(payload["metrics"]) == {"acc", "acc_norm", "acc_mean_logprob"}


def test_markdown_table_written_beside_json_and_printed(harness_run):
    md = harness_run["json"].with_suffix(".md").read_text()
    assert md in harness_run["proc"].stdout  # the same report is printed
    header = next(line for line in md.splitlines() if line.startswith("| task |"))
    assert "tiny-run/iter_000008" in header and "Qwen2.5-1.5B (reported)" in header
    for title in ("ARC-Easy", "ARC-Challenge", "OpenBookQA"):
        assert f"| {title} | acc |" in md
    acc = harness_run["payload"]["results"]["arc_easy"]["acc"]
    assert f"| ARC-Easy | acc | {100 * acc:.1f} ± " in md and "| 73.6 |" in md  # side by side with the reference
    assert "| acc (mean log-prob per answer token) |" in md and "REPORTED figures" in md
    assert "seed" not in md.lower()  # no project-internal words in what users read


def test_per_question_samples_written(harness_run):
    lines = harness_run["json"].with_suffix(".samples.jsonl").read_text().splitlines()
    assert len(lines) == sum(FIXTURE_SIZES.values())


def test_help_is_cheap_and_documents_the_options(run_cli):
    proc = run_cli("eval.harness", "--help")
    assert proc.returncode == 0
    for option in ("--data-dir", "--output", "--compare", "--limit", "--tasks", "--device", "--dtype", "--batch-size"):
        assert option in proc.stdout
    assert "lm_eval" not in proc.stderr  # --help must not pay for importing lm-eval (no warnings from it)


def test_e2e_runtime_is_reported(harness_run, record_property):
    # Not an assertion on speed (shared CI machines vary); recorded for the report.
    record_property("harness_wall_s", round(harness_run["wall_s"], 1))
    assert harness_run["payload"]["runtime_s"] > 0
