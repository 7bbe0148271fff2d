"""Results files: the JSON schema, reading earlier files for --compare, and the markdown table.

Results JSON (schema "llmstack.eval/1"):

    {
      "schema": "llmstack.eval/1",
      "name": "run/iter_000008",                        # the column label in tables
      "model": {name, checkpoint, kind, path, run_dir, model_type, class, n_params, iter, tokens},
      "settings": {tasks, data, device, dtype, batch_size, limit, num_fewshot, lm_eval_version, ...},
      "results": {"arc_easy": {"acc": 0.25, "acc_stderr": 0.11, "acc_norm": ..., "acc_norm_stderr": ...,
                               "acc_mean_logprob": ..., "acc_mean_logprob_stderr": ..., "n": 16, "n_total": 16},
                  "arc_challenge": {...}, "openbookqa": {...}},
      "metrics": {"acc": "what it means", ...},
      "runtime_s": 12.3, "created": "2025-01-01T00:00:00+00:00"
    }

Metric values are fractions in [0, 1] (plain floats; null when undefined, e.g. a stderr of one
question). --compare also reads lm-eval's own output JSON (keys like "acc,none").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .errors import EvalError
from .scoring import METRIC_DOCS, METRICS
from .taskspec import TASKS

SCHEMA = "llmstack.eval/1"
METRIC_LABELS = {"acc": "acc", "acc_norm": "acc_norm", "acc_mean_logprob": "acc (mean log-prob per answer token)"}


def load_results_file(path: str | Path) -> dict[str, Any]:
    """A results file (ours or lm-eval's) as {"name", "results": {task: {metric: value}}, "note"}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EvalError(f"--compare {path}: no such file.") from e
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise EvalError(f"{path}: no 'results' object; expected an eval.harness (or lm-eval) results JSON.")
    clean: dict[str, dict[str, Any]] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            raise EvalError(f"{path}: results.{task} must be an object of metrics, got {type(metrics).__name__}.")
        # lm-eval names metrics "acc,none" (metric, filter); ours are plain.
        clean[task] = {k.split(",")[0]: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    return {"name": data.get("name") or path.stem, "results": clean, "note": data.get("note")}


def _cell(metrics: dict[str, Any] | None, key: str) -> str:
    if not metrics or not isinstance(metrics.get(key), (int, float)):
        return "—"
    value = f"{100 * metrics[key]:.1f}"
    err = metrics.get(f"{key}_stderr")
    return f"{value} ± {100 * err:.1f}" if isinstance(err, (int, float)) else value


def markdown_table(columns: Sequence[dict[str, Any]]) -> str:
    """One row per (task, metric), one column per results file: side-by-side comparison.

    Values are percentages (± one standard error where known); "—" where a file lacks the metric.
    """
    tasks: list[str] = []
    for col in columns:
        tasks += [t for t in col["results"] if t not in tasks]
    header = "| task | metric | " + " | ".join(c["name"].replace("|", "/") for c in columns) + " |"
    lines = [header, "|---|---|" + "---:|" * len(columns)]
    for task in tasks:
        title = TASKS[task].title if task in TASKS else task
        for i, metric in enumerate(METRICS):
            cells = [_cell(c["results"].get(task), metric) for c in columns]
            lines.append(f"| {title if i == 0 else ''} | {METRIC_LABELS[metric]} | " + " | ".join(cells) + " |")
        counts = [str(c["results"].get(task, {}).get("n", "—")) for c in columns]
        lines.append("|  | questions | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def markdown_report(payload: dict[str, Any], compare: Sequence[dict[str, Any]] = ()) -> str:
    """The table plus what the columns and metrics mean: printed, and saved as .md beside the JSON."""
    model, settings = payload.get("model", {}), payload.get("settings", {})
    out = [f"## Evaluation: {payload['name']}", ""]
    facts = [
        f"checkpoint `{model.get('checkpoint')}`" if model.get("checkpoint") else None,
        f"{model.get('class')} ({model['n_params'] / 1e6:.1f}M parameters)" if model.get("n_params") else None,
        f"{model['tokens']:,} tokens trained" if isinstance(model.get("tokens"), int) else None,
        f"data: {settings.get('data')}" if settings.get("data") else None,
        f"{settings.get('num_fewshot', 0)}-shot, {settings.get('device')}, {settings.get('dtype')}",
        f"limit {settings['limit']} per task" if settings.get("limit") else None,
        f"{payload['runtime_s']:.1f} s" if isinstance(payload.get("runtime_s"), (int, float)) else None,
    ]
    out += ["; ".join(f for f in facts if f) + ".", "", markdown_table([payload, *compare]), ""]
    out += [f"- **{METRIC_LABELS[m]}**: {METRIC_DOCS[m]}." for m in METRICS]
    out += [f"- **{c['name']}**: {c['note']}" for c in compare if c.get("note")]
    return "\n".join(out) + "\n"


def default_output_path(local_dir: Path | None, name: str) -> Path:
    """eval_results.json inside the checkpoint dir; for a Hub id, ./eval_results/ORG__NAME.json."""
    if local_dir is not None:
        return local_dir / "eval_results.json"
    return Path("eval_results") / (name.replace("/", "__") + ".json")
