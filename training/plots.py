"""Plots of run logs (training.analysis --out DIR): loss (with val loss), learning rate, throughput, MFU,
memory and gradient norm against iterations and against tokens, one line per run, titled with each
run's model, global batch, precision and world size. matplotlib on the Agg backend, imported when drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_log import config_value, finite_number


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
    preset = config_value(config.get("model"), "preset") if isinstance(config.get("model"), dict) else None
    preset = preset or config_value(config, "preset")
    n_params = finite_number(config_value(config, "n_params"))
    parts = [" ".join(x for x in (str(preset) if preset else "", f"({_si(n_params)} params)" if n_params else "") if x)]
    seqs, seq_len, tpi = (finite_number(config_value(config, k)) for k in ("global_batch_sequences", "seq_len", "tokens_per_iter"))
    if seqs and seq_len:
        parts.append(f"global batch {seqs:.0f} x {seq_len:.0f} = {_si(tpi or seqs * seq_len)} tokens")
    elif tpi:
        parts.append(f"global batch {_si(tpi)} tokens")
    parts.append(str(config_value(config, "precision") or ""))
    world, device = config_value(config, "world_size"), config_value(config, "device")
    strategy = config_value(config, "distributed_type")
    stage = config_value(config, "ds_stage")
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
            tpi = finite_number(config_value(r, "tokens_per_iter")) or tpi
        elif r["type"] == "train" and isinstance(r.get("iter"), int):
            tokens = finite_number(r.get("tokens"))
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
    tpis = {finite_number(config_value(cfg, "tokens_per_iter")) for _, _, cfg, pts in parsed if pts}
    shared_tpi = next(iter(tpis)) if len(tpis) == 1 and None not in tpis else None
    mem_kinds = {str(config_value(cfg, "mem_kind")) for _, _, cfg, _ in parsed if config_value(cfg, "mem_kind")}
    captions = "\n".join(run_caption(name, cfg) for name, _, cfg, _ in parsed)

    figures, skipped = {}, {}
    for stem, ylabel, fields in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 4.8 + 0.25 * len(parsed)))
        drawn, xs = 0, []
        for name, records, cfg, pts in parsed:
            kind = config_value(cfg, "mem_kind")
            iter_to_x = {i: (t if by_tokens else i) for i, t, _ in pts}
            color = None  # one colour per run; its fields / val loss differ by line style
            for field, style in zip(fields, ("-", "--", ":")):
                line = [(t if by_tokens else i, finite_number(r.get(field))) for i, t, r in pts]
                line = [(x, v) for x, v in line if v is not None]
                if not line:
                    continue
                what = MEMORY_LABELS.get(kind, {}).get(field, field) if stem == "memory" else field
                label = name if len(fields) == 1 else f"{name}: {what}"
                color = ax.plot(*zip(*line), style, label=label, linewidth=1.2, color=color)[0].get_color()
                xs += [x for x, _ in line]
                drawn += 1
            if stem == "loss":
                val = [(r.get("iter"), finite_number(r.get("val_loss"))) for r in records if r["type"] == "eval"]
                tpi = finite_number(config_value(cfg, "tokens_per_iter"))
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
