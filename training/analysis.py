"""Run logs -> per-run summaries, a ranking across runs, and plots.

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
from typing import Any, Iterable, Sequence

from training import run_log


# ------------------------------------------------------------------------------------------------
# Tables (shared by training.planning and training.sweep: plain text for the console, markdown for files)
# ------------------------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], markdown: bool = False) -> str:
    """Right-align numbers, left-align text; `markdown=True` gives a GitHub table."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in rows if r[i]) and any(r[i] for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return ("| " + " | ".join(out) + " |") if markdown else "  ".join(out).rstrip()

    sep = ("|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
           if markdown else "  ".join("-" * w for w in widths))
    return "\n".join([line(list(headers)), sep] + [line(r) for r in rows])


def _looks_numeric(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").strip()
    try:
        float(t)
        return True
    except ValueError:
        return t in ("-", "n/a")


def fmt(value: Any, spec: str = ".3f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def duration(seconds: float | None) -> str:
    """12.3 s / 4.5 min / 3.21 h / 2.10 d: readable at every run length."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2f} {unit}"
    return f"{seconds:.1f} s"


def write_json(obj: Any, target: str | None) -> None:
    """--json FILE writes a file, --json - prints to stdout."""
    text = json.dumps(obj, indent=2, default=str)
    if target == "-":
        print(text)
    elif target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text + "\n")


def _find_key(obj: Any, key: str) -> Any:
    """First value of `key` in a (nested) config record: the trainer flattens run_info into the
    record, older or other writers may nest it under "config" or "recipe"."""
    if isinstance(obj, dict):
        if key in obj and obj[key] is not None:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


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
    tokens_per_iter = _num(_find_key(config, "tokens_per_iter"))
    max_iters = _find_key(config, "max_iters")

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
        time_ms = _num(r.get("time_ms"))
        if time_ms is not None:
            train_time_s += time_ms * window / 1000.0
            tps = _num(r.get("tokens_per_sec"))
            if tokens_per_iter is None and tps is not None:
                tokens += tps * time_ms * window / 1000.0
        if tokens_per_iter is not None:
            tokens += tokens_per_iter * window

    evals = [r for r in records if r["type"] == "eval"]
    ckpts = [r for r in records if r["type"] == "checkpoint"]
    harness = [r for r in records if r["type"] == "eval_harness"]
    mfus = [m for m in (_num(r.get("mfu")) for r in train) if m is not None]
    tflops = [t for t in (_num(r.get("tflops")) for r in train) if t is not None]
    peaks = [m for m in (_num(r.get("mem_peak_gb")) for r in train) if m is not None]
    val_losses = [(r.get("iter"), _num(r.get("val_loss"))) for r in evals if _num(r.get("val_loss")) is not None]
    last_iter = train[-1]["iter"] if train else None
    times = [t for t in (_num(r.get("time")) for r in records) if t is not None]

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
        "final_loss": _num(train[-1].get("loss")) if train else None,
        "final_val_loss": val_losses[-1][1] if val_losses else None,
        "best_val_loss": min(v for _, v in val_losses) if val_losses else None,
        "peak_mem_gb": max(peaks) if peaks else None,
        "eval_time_s": sum(_num(r.get("time_ms")) or 0.0 for r in evals) / 1000.0,
        "checkpoint_time_s": sum(_num(r.get("time_ms")) or 0.0 for r in ckpts) / 1000.0,
        "wall_time_s": (max(times) - min(times)) if len(times) >= 2 and len(configs) <= 1 else None,
        "harness": harness[-1].get("tasks") if harness else None,
        "device": _find_key(config, "device"),
        "preset": _find_key(config, "preset"),
    }


def _run_name(log: Path, config: dict) -> str:
    name = _find_key(config, "run_name")
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
# Plots
# ------------------------------------------------------------------------------------------------
PLOTS: list[tuple[str, str, list[str]]] = [
    # (file stem, y label, train-record fields; loss also draws the eval records' val_loss)
    ("loss", "loss", ["loss"]),
    ("lr", "learning rate", ["lr"]),
    ("tokens_per_sec", "tokens / s", ["tokens_per_sec"]),
    ("mfu", "MFU", ["mfu"]),
    ("memory", "GB", ["mem_peak_gb", "mem_allocated_gb", "mem_reserved_gb"]),
    ("grad_norm", "grad norm", ["grad_norm"]),
]
# What the memory fields measure, by the config record's mem_kind (training/callbacks.py).
MEMORY_LABELS: dict[str, dict[str, str]] = {
    "cuda_allocator": {"mem_peak_gb": "peak allocated (CUDA allocator)", "mem_allocated_gb": "allocated (CUDA allocator)",
                       "mem_reserved_gb": "reserved (CUDA allocator)"},
    "process_rss": {"mem_peak_gb": "peak RSS (process)", "mem_allocated_gb": "RSS (process)",
                    "mem_reserved_gb": "reserved"},
}
MEMORY_YLABEL = {"cuda_allocator": "GB, rank 0, CUDA allocator", "process_rss": "GB, rank 0, process RSS (CPU)"}


def _si(value: float) -> str:
    """4.1k / 12M / 3.5B: token counts on an axis."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def run_caption(name: str, config: dict) -> str:
    """'name: preset (N params), global batch S x L = T tokens, precision, W x device (strategy)'."""
    preset = _find_key(config.get("model"), "preset") if isinstance(config.get("model"), dict) else None
    preset = preset or _find_key(config, "preset")
    n_params = _num(_find_key(config, "n_params"))
    parts = [" ".join(x for x in (str(preset) if preset else "", f"({_si(n_params)} params)" if n_params else "") if x)]
    seqs, seq_len, tpi = (_num(_find_key(config, k)) for k in ("global_batch_sequences", "seq_len", "tokens_per_iter"))
    if seqs and seq_len:
        parts.append(f"global batch {seqs:.0f} x {seq_len:.0f} = {_si(tpi or seqs * seq_len)} tokens")
    elif tpi:
        parts.append(f"global batch {_si(tpi)} tokens")
    parts.append(str(_find_key(config, "precision") or ""))
    world, device = _find_key(config, "world_size"), _find_key(config, "device")
    strategy = _find_key(config, "distributed_type")
    stage = _find_key(config, "ds_stage")
    if world or device:
        where = f"{world or '?'} x {device or '?'}"
        if strategy:
            where += f" ({strategy}" + (f" ZeRO-{stage}" if stage is not None and str(strategy).upper() == "DEEPSPEED" else "") + ")"
        parts.append(where)
    return f"{name}: " + ", ".join(p for p in parts if p)


def _train_points(records: list[dict]) -> list[tuple[int, float | None, dict]]:
    """(iter, tokens seen at that iter or None, record) per train record; tokens from the record's
    own `tokens`, else iter x the segment's tokens_per_iter."""
    out, tpi = [], None
    for r in records:
        if r["type"] == "config":
            tpi = _num(_find_key(r, "tokens_per_iter")) or tpi
        elif r["type"] == "train" and isinstance(r.get("iter"), int):
            tokens = _num(r.get("tokens"))
            out.append((r["iter"], tokens if tokens is not None else (r["iter"] * tpi if tpi else None), r))
    return out


def _readable_log_axis(ax: Any, axis: str = "y") -> None:
    """Log scale with ticks at 1, 2, 5 x 10^k labelled as plain numbers (0.0002, not 2x10^-4 in
    tiny mathtext), so a span of less than a decade still shows labelled ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def build_figures(runs: list[tuple[str, list[dict]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """({stem: matplotlib Figure}, {stem: why skipped}): one figure per metric, every run a line.

    x is tokens seen (runs with different global batches line up) whenever every run's log says its
    tokens per iteration; the top axis then gives iterations when all runs share one batch. The
    axis starts at the first logged point. A metric with no values in any run (MFU on CPU) is
    skipped and reported, not drawn empty.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    parsed = []
    for name, records in runs:
        configs = [r for r in records if r["type"] == "config"]
        parsed.append((name, records, configs[-1] if configs else {}, _train_points(records)))
    by_tokens = all(pts and all(t is not None for _, t, _ in pts) for _, _, _, pts in parsed if pts)
    tpis = {_num(_find_key(cfg, "tokens_per_iter")) for _, _, cfg, pts in parsed if pts}
    shared_tpi = next(iter(tpis)) if len(tpis) == 1 and None not in tpis else None
    mem_kinds = {str(_find_key(cfg, "mem_kind")) for _, _, cfg, _ in parsed if _find_key(cfg, "mem_kind")}
    captions = "\n".join(run_caption(name, cfg) for name, _, cfg, _ in parsed)

    figures, skipped = {}, {}
    for stem, ylabel, fields in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 4.8 + 0.25 * len(parsed)))
        drawn, xs = 0, []
        for name, records, cfg, pts in parsed:
            kind = _find_key(cfg, "mem_kind")
            iter_to_x = {i: (t if by_tokens else i) for i, t, _ in pts}
            color = None  # one colour per run; its fields / val loss differ by line style
            for field, style in zip(fields, ("-", "--", ":")):
                line = [(t if by_tokens else i, _num(r.get(field))) for i, t, r in pts]
                line = [(x, v) for x, v in line if v is not None]
                if not line:
                    continue
                what = MEMORY_LABELS.get(kind, {}).get(field, field) if stem == "memory" else field
                label = name if len(fields) == 1 else f"{name}: {what}"
                color = ax.plot(*zip(*line), style, label=label, linewidth=1.2, color=color)[0].get_color()
                xs += [x for x, _ in line]
                drawn += 1
            if stem == "loss":
                val = [(r.get("iter"), _num(r.get("val_loss"))) for r in records if r["type"] == "eval"]
                tpi = _num(_find_key(cfg, "tokens_per_iter"))
                val = [((iter_to_x.get(i) or (i * tpi if by_tokens and tpi else i)), v) for i, v in val
                       if isinstance(i, int) and v is not None]
                if val:
                    ax.plot(*zip(*val), "o--", label=f"{name}: val_loss", markersize=4, color=color)
                    xs += [x for x, _ in val]
                    drawn += 1
        if not drawn:
            plt.close(fig)
            skipped[stem] = f"no {'/'.join(fields)} values in any run"
            continue
        ys = [v for ln in ax.get_lines() for v in ln.get_ydata()]
        if stem in ("lr", "grad_norm") and ys and min(ys) > 0 and max(ys) / min(ys) >= 10:
            _readable_log_axis(ax)  # both span decades (warmup from ~0, early gradient spikes)
        ax.set_xlim(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)  # from the first point, no gap
        if by_tokens:
            ax.set_xlabel("tokens seen")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v)))
            if shared_tpi:  # one batch size: iterations on the top axis
                top = ax.secondary_xaxis("top", functions=(lambda t: t / shared_tpi, lambda i: i * shared_tpi))
                top.set_xlabel("iteration")
        else:
            ax.set_xlabel("iteration")
        if stem == "memory" and len(mem_kinds) == 1:
            ylabel = MEMORY_YLABEL.get(next(iter(mem_kinds)), ylabel)
        ax.set_ylabel(ylabel)
        ax.set_title(captions, fontsize=8, loc="left")
        fig.suptitle(f"{ylabel if stem != 'memory' else 'memory'} vs {'tokens' if by_tokens else 'iterations'}",
                     fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figures[stem] = fig
    return figures, skipped


def plot_runs(runs: list[tuple[str, list[dict]]], out_dir: str | Path) -> dict[str, Any]:
    """One PNG per metric (see build_figures) in out_dir: {"written": [paths], "skipped": {stem: why}}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, skipped = build_figures(runs)
    import matplotlib.pyplot as plt  # after build_figures chose the Agg backend

    written = []
    for stem, fig in figures.items():
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return {"written": written, "skipped": skipped}


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
