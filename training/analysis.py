"""Run logs -> per-run summaries, a ranking across runs, and plots (training/plots.py).

    python -m training.analysis runs/qwen3_b200 runs/llama3_a6000 [--out DIR] [--json FILE|-] [--no-plots]

Reads `<run_dir>/log.jsonl` (training/run_log.py; docs/formats.md, Run log): a "config" record, then "train" records
(iter, loss, lr, grad_norm, tokens, tokens_per_sec, mfu, tflops, time_ms, mem_*_gb), "eval" records (val_loss and
the eval's own time_ms), "checkpoint" records, maybe "eval_harness" records. A resumed run appends
a new "config" record (with "start_iter") after truncating the records past its checkpoint.

What a train record's time_ms means: training/callbacks.py (TrainMetrics) logs every
`log_interval` iterations the wall time of that window divided by its iterations, with evals and
checkpoints already subtracted. So

    training time = sum over train records of time_ms * (iterations in its window) / 1000

where the window of a record is its iter minus the previous train record's iter (or the segment's
start_iter). With a record every iteration this is plain sum(time_ms) / 1000. eval and checkpoint
records carry their own time_ms, which is NOT training time and is reported separately.

Lines that are empty or not JSON (a line cut short when a run was killed) are skipped and counted,
never fatal (run_log.read). Writes summary.md, summary.json and PNG plots (matplotlib, Agg backend) to
`--out` (default `<first run dir>/analysis/`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from training import run_log
from training.plots import plot_runs
from training.tables import duration, fmt, format_table, write_json



# ------------------------------------------------------------------------------------------------
# Summary of one run
# ------------------------------------------------------------------------------------------------
def summarize(log_path: str | Path) -> dict:
    """Totals and figures of one run log (see the module docstring for the time accounting)."""
    parsed = run_log.read(log_path)
    log, records, skipped = parsed.path, parsed.records, len(parsed.skipped)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["type"]] = counts.get(r["type"], 0) + 1

    configs, config = parsed.configs, parsed.config
    tokens_per_iter = run_log.finite_number(run_log.config_value(config, "tokens_per_iter"))
    max_iters = run_log.config_value(config, "max_iters")

    # Walk the records in order; a config record starts a segment (fresh start or resume).
    train_time_s = tokens = 0.0
    iters_trained = 0
    prev_iter: int | None = None
    windows: list[int] = []
    train = []
    for r in records:
        if r["type"] == "config":
            prev_iter = int(r.get("start_iter") or 0)
            continue
        if r["type"] != "train" or not isinstance(r.get("iter"), int):
            continue
        start = prev_iter if prev_iter is not None else 0
        window = max(1, r["iter"] - start)  # a 0-indexed first record still covers one iteration
        prev_iter = r["iter"]
        train.append(r)
        windows.append(window)
        iters_trained += window
        time_ms = run_log.finite_number(r.get("time_ms"))
        if time_ms is not None:
            train_time_s += time_ms * window / 1000.0
            tps = run_log.finite_number(r.get("tokens_per_sec"))
            if tokens_per_iter is None and tps is not None:
                tokens += tps * time_ms * window / 1000.0
        if tokens_per_iter is not None:
            tokens += tokens_per_iter * window

    evals = [r for r in records if r["type"] == "eval"]
    ckpts = [r for r in records if r["type"] == "checkpoint"]
    harness = [r for r in records if r["type"] == "eval_harness"]
    mfus = [m for m in (run_log.finite_number(r.get("mfu")) for r in train) if m is not None]
    tflops = [t for t in (run_log.finite_number(r.get("tflops")) for r in train) if t is not None]
    peaks = [m for m in (run_log.finite_number(r.get("mem_peak_gb")) for r in train) if m is not None]
    val_losses = [(r.get("iter"), run_log.finite_number(r.get("val_loss"))) for r in evals if run_log.finite_number(r.get("val_loss")) is not None]
    last_iter = train[-1]["iter"] if train else None
    times = [t for t in (run_log.finite_number(r.get("time")) for r in records) if t is not None]

    if max_iters is None:
        status = "unknown (no max_iters in the config record)" if train else "no train records"
        complete = None
    else:
        complete = last_iter is not None and last_iter >= int(max_iters)
        status = "complete" if complete else (
            f"cut off at iter {last_iter} of {max_iters} ({100 * (last_iter or 0) / int(max_iters):.1f}%)"
        )
    if skipped:
        status += f"; {skipped} unreadable line(s) skipped"

    tokens_per_sec = tokens / train_time_s if train_time_s > 0 else None
    return {
        "run": _run_name(log, config),
        "log": str(log),
        "skipped_lines": skipped,
        "record_counts": counts,
        "segments": len(configs),
        "iters": iters_trained,
        "last_iter": last_iter,
        "max_iters": max_iters,
        "complete": complete,
        "status": status,
        "train_time_s": train_time_s,
        "time_per_iter_ms": 1000.0 * train_time_s / iters_trained if iters_trained else None,
        "tokens": tokens,
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_hour": tokens_per_sec * 3600 if tokens_per_sec is not None else None,
        "mfu_mean": statistics.fmean(mfus) if mfus else None,
        "mfu_median": statistics.median(mfus) if mfus else None,
        "tflops_mean": statistics.fmean(tflops) if tflops else None,
        "final_loss": run_log.finite_number(train[-1].get("loss")) if train else None,
        "final_val_loss": val_losses[-1][1] if val_losses else None,
        "best_val_loss": min(v for _, v in val_losses) if val_losses else None,
        "peak_mem_gb": max(peaks) if peaks else None,
        "eval_time_s": sum(run_log.finite_number(r.get("time_ms")) or 0.0 for r in evals) / 1000.0,
        "checkpoint_time_s": sum(run_log.finite_number(r.get("time_ms")) or 0.0 for r in ckpts) / 1000.0,
        "wall_time_s": (max(times) - min(times)) if len(times) >= 2 and len(configs) <= 1 else None,
        "harness": harness[-1].get("tasks") if harness else None,
        "device": run_log.config_value(config, "device"),
        "preset": run_log.config_value(config, "preset"),
    }


def _run_name(log: Path, config: dict) -> str:
    name = run_log.config_value(config, "run_name")
    return str(name) if name else log.parent.name


def rank_runs(summaries: list[dict]) -> list[dict]:
    """Best first: by final validation loss where there is one, else by final train loss."""
    def key(s: dict) -> tuple:
        val, train = s.get("final_val_loss"), s.get("final_loss")
        return (val is None, val if val is not None else math.inf, train if train is not None else math.inf)

    return sorted(summaries, key=key)


def summary_table(summaries: list[dict], markdown: bool = False) -> str:
    headers = ["rank", "run", "iters", "status", "train time", "ms/iter", "tok/s", "Mtok/h", "MFU mean",
               "MFU median", "loss", "val loss", "peak GB"]
    rows = []
    for i, s in enumerate(summaries, 1):
        seen = f"{s['iters']}/{s['max_iters']}" if s.get("max_iters") is not None else str(s["iters"])
        rows.append([
            i, s["run"], seen, s["status"], duration(s["train_time_s"]), fmt(s["time_per_iter_ms"], ".1f"),
            fmt(s["tokens_per_sec"], ",.0f"), fmt(s["tokens_per_hour"] / 1e6 if s["tokens_per_hour"] else None, ",.1f"),
            fmt(100 * s["mfu_mean"] if s["mfu_mean"] is not None else None, ".1f"),
            fmt(100 * s["mfu_median"] if s["mfu_median"] is not None else None, ".1f"),
            fmt(s["final_loss"], ".4f"), fmt(s["final_val_loss"], ".4f"), fmt(s["peak_mem_gb"], ".2f"),
        ])
    return format_table(headers, rows, markdown=markdown)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def analyze(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, plots: bool = True) -> dict:
    """Summaries + ranking (+ plots); writes summary.md and summary.json to out_dir."""
    if not run_dirs:
        raise ValueError("no run directories given")
    logs = [run_log.resolve(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else logs[0].parent / "analysis"
    summaries = rank_runs([summarize(log) for log in logs])
    result: dict[str, Any] = {"runs": summaries, "out_dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        by_name = {s["log"]: s["run"] for s in summaries}
        result["plots"] = plot_runs([(by_name[str(log)], run_log.read(log).records) for log in logs], out)
    md = ["# Run analysis", "", summary_table(summaries, markdown=True), "",
          "Training time excludes eval and checkpoint time (their records' time_ms are reported apart). "
          "MFU is per GPU against the dense peak of training/hardware.py; '-' where the log has none (CPU)."]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    write_json(result, str(out / "summary.json"))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.analysis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (holding log.jsonl) or log files")
    ap.add_argument("--out", metavar="DIR", help="where summary.md, summary.json and the plots go "
                                                 "(default: <first run dir>/analysis/)")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' for stdout only)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = ap.parse_args(argv)
    try:
        result = analyze(args.runs, args.out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        write_json(result, "-")
        return 0
    print(summary_table(result["runs"]))
    for s in result["runs"]:
        extra = [f"tokens {s['tokens']:,.0f}", f"eval time {s['eval_time_s']:.1f} s",
                 f"checkpoint time {s['checkpoint_time_s']:.1f} s"]
        if s["skipped_lines"]:
            extra.append(f"{s['skipped_lines']} unreadable line(s) skipped")
        if s["harness"]:
            extra.append(f"harness {json.dumps(s['harness'])}")
        print(f"  {s['run']}: " + ", ".join(extra))
    plots = result.get("plots")
    if plots:
        print(f"\nplots: {len(plots['written'])} written to {result['out_dir']}"
              + "".join(f"\n  skipped {k}: {v}" for k, v in plots["skipped"].items()))
    print(f"summary: {result['out_dir']}/summary.md, summary.json")
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
