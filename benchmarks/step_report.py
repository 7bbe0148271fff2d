"""The training-step benchmark's numbers and report: device label and dense peak, throughput and MFU
from step times, ours/native ratios and their summary, the markdown table, default result paths."""

from __future__ import annotations

import logging
import platform
import statistics
from pathlib import Path
from typing import Any, Optional

import torch

from modeling import mfu
from training.hardware import canonical_gpu_name, detect_device, matmul_dtype, peak_flops

from .report import fmt, format_table, slug
from .timing import geomean, step_time_ms

logger = logging.getLogger("benchmarks.step")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MEMORY_KINDS = {
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated over build, warm-up and timed steps, "
                                 "each variant alone on the GPU",
    "cpu_peak_live_tensor_bytes": "peak of live tensor bytes (weights, AdamW state, activations, gradients) "
                                  "over one step, tracked op by op through the dispatcher; not measured under compile",
}


def device_info(device: torch.device, dtype: str) -> dict[str, Any]:
    """Label for file names (`cpu`, `h100-sxm`, ...), the device name, and the dense peak for `dtype`
    (None on CPU and on GPUs missing from `training.hardware.PEAK_FLOPS`: MFU is then null)."""
    if device.type != "cuda":
        return {"label": "cpu", "name": platform.processor() or platform.machine(), "peak_flops": None,
                "peak_dtype": None, "detected": detect_device()}
    name = torch.cuda.get_device_name(device)
    try:
        gpu: Optional[str] = canonical_gpu_name(name)
    except ValueError as exc:
        logger.warning("%s: MFU will be null", exc)
        gpu = None
    # fp32 matmuls run on tensor cores (TF32) only when torch is told so; the peak must match
    peak_dtype = matmul_dtype(dtype)  # the same column training reads (TF32 when torch allows it)
    return {"label": slug(gpu or name), "name": name, "peak_flops": peak_flops(gpu, peak_dtype) if gpu else None,
            "peak_dtype": peak_dtype, "detected": detect_device()}


def throughput_metrics(
    step_times_s: list[float], tokens_per_step: int, flops_per_tok: float, peak_flops_per_sec: Optional[float]
) -> dict[str, Any]:
    """Step-time statistics and the rates derived from the median step (robust to stragglers).

    tokens/s = tokens_per_step / median;  TFLOP/s = tokens/s * flops_per_tok / 1e12;
    MFU = tokens/s * flops_per_tok / peak (None without a peak, e.g. on CPU)."""
    tokens_per_sec = tokens_per_step / statistics.median(step_times_s)
    return {
        "step_time_ms": step_time_ms(step_times_s),
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_best_step": tokens_per_step / min(step_times_s),  # the least disturbed step
        "tflops": tokens_per_sec * flops_per_tok / 1e12,
        "mfu": mfu(tokens_per_sec, flops_per_tok, peak_flops_per_sec),
    }


def add_ratios(rows: dict[str, dict], variants: list) -> None:
    """ours / native at the same attention backend and compile setting (same weights, batch, optimizer)."""
    native = {v.group: rows[v.label] for v in variants if v.impl == "native"}
    for v in variants:
        row = rows[v.label]
        row["ratio_tokens_per_sec_vs_native"] = row["ratio_best_step_vs_native"] = None
        row["ratio_peak_memory_vs_native"] = None
        partner = native.get(v.group)
        if v.impl != "ours" or partner is None or row["status"] != "ok" or partner["status"] != "ok":
            continue
        row["ratio_tokens_per_sec_vs_native"] = row["tokens_per_sec"] / partner["tokens_per_sec"]
        # min step times: on a shared CPU, contention only ever adds time, so the fastest steps are
        # the best estimate of each side's own cost; the median ratio is the headline
        row["ratio_best_step_vs_native"] = row["tokens_per_sec_best_step"] / partner["tokens_per_sec_best_step"]
        if row.get("peak_memory_gb") and partner.get("peak_memory_gb"):
            row["ratio_peak_memory_vs_native"] = row["peak_memory_gb"] / partner["peak_memory_gb"]


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Worst (min), geometric-mean and best ours/native ratio over every compared configuration."""
    ratios = [r["ratio_tokens_per_sec_vs_native"] for r in rows if r.get("ratio_tokens_per_sec_vs_native")]
    best_step = [r["ratio_best_step_vs_native"] for r in rows if r.get("ratio_best_step_vs_native")]
    ok = [r for r in rows if r["status"] == "ok" and r.get("tokens_per_sec")]
    best = max(ok, key=lambda r: r["tokens_per_sec"], default=None)
    return {
        "ratio_tokens_per_sec_vs_native": min(ratios) if ratios else None,  # worst case: "never slower" checks this
        "ratio_tokens_per_sec_vs_native_geomean": geomean(ratios) if ratios else None,
        "ratio_tokens_per_sec_vs_native_max": max(ratios) if ratios else None,
        "ratio_best_step_vs_native_geomean": geomean(best_step) if best_step else None,
        "compared": {r["label"]: r["ratio_tokens_per_sec_vs_native"] for r in rows if r.get("ratio_tokens_per_sec_vs_native")},
        "best": None if best is None else {k: best[k] for k in ("label", "tokens_per_sec", "tflops", "mfu")},
        "skipped": {r["label"]: r["reason"] for r in rows if r["status"] != "ok"},
    }


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
MD_HEADERS = ("variant", "mb", "step ms median (min / p90)", "tokens/s", "TFLOP/s", "MFU", "peak mem GB",
              "ours/native tok/s (best step)", "first loss")
MD_ALIGN = "lrlrrrrlr"


def _md_cells(r: dict[str, Any]) -> list[str]:
    if r["status"] != "ok":
        return [r["label"], "", f"{r['status']}: {r['reason']}"] + [""] * 6
    st = r["step_time_ms"]
    mfu_pct = None if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    ratio = fmt(r["ratio_tokens_per_sec_vs_native"], ".3f")
    if r["ratio_best_step_vs_native"] is not None:
        ratio += f" ({r['ratio_best_step_vs_native']:.3f})"
    return [r["label"], r["micro_batch"], f"{st['median']:.2f} ({st['min']:.2f} / {st['p90']:.2f})",
            f"{r['tokens_per_sec']:,.0f}", f"{r['tflops']:.3f}", mfu_pct or "-", fmt(r["peak_memory_gb"], ".3f"),
            ratio, fmt(r["loss_first_step"], ".4f")]


def to_markdown(result: dict[str, Any]) -> str:
    s, m, d, env, sm = result["settings"], result["model"], result["device"], result["environment"], result["summary"]
    over = " ".join(f"{k}={v}" for k, v in s["overrides"].items())
    rounds = f", interleaved in {s['rounds']} rounds" if s["interleave"] else ""
    lines = [
        f"# Training-step benchmark: {s['preset']}{' ' + over if over else ''} on {d['label']} ({d['name']})",
        "",
        f"`{result['command']}`  ",
        f"{result['created_utc']}; torch {env['torch']}, transformers {env['transformers']}, {env['cpu_threads']} CPU threads  ",
        f"seq_len {s['seq_len']}, dtype {s['dtype']} ({s['precision']}), warm-up {s['warmup']}, "
        f"{s['iters']} timed steps{rounds}; {m['parameters'] / 1e6:.2f}M parameters, "
        f"{m['flops_per_token'] / 1e6:.2f} MFLOP/token ({m['flops_definition']})",
        "",
        format_table(MD_HEADERS, [_md_cells(r) for r in result["rows"]], markdown=True, align=MD_ALIGN, padded=False),
        "",
        f"ours/native tokens/s: worst {fmt(sm['ratio_tokens_per_sec_vs_native'], '.3f')}, geomean "
        f"{fmt(sm['ratio_tokens_per_sec_vs_native_geomean'], '.3f')}, best "
        f"{fmt(sm['ratio_tokens_per_sec_vs_native_max'], '.3f')} (from median steps; from the fastest steps, "
        f"geomean {fmt(sm['ratio_best_step_vs_native_geomean'], '.3f')}).  ",
    ]
    mem_kind = next((r["memory_kind"] for r in result["rows"] if r.get("memory_kind")), None)
    lines.append(f"Peak memory: {MEMORY_KINDS.get(mem_kind, 'not measured')}.  ")
    if d["peak_flops"] is None:
        lines.append("MFU: null, no known dense peak for this device.")
    else:
        lines.append(f"MFU against {d['peak_flops'] / 1e12:.1f} TFLOP/s ({d['peak_dtype']} dense peak of {d['label']}).")
    syncs = {r["label"]: r.get("host_syncs_per_step") for r in result["rows"] if r.get("host_syncs_per_step") is not None}
    if syncs:
        lines.append("  \nHost syncs per step: " + ", ".join(f"{k} {v}" for k, v in syncs.items()) + ".")
    return "\n".join(lines) + "\n"


def default_paths(result: dict[str, Any], tag: Optional[str]) -> tuple[Path, Path]:
    stem = f"{result['device']['label']}-{result['created_utc'][:10]}" + (f"-{slug(tag)}" if tag else "")
    return RESULTS_DIR / f"{stem}.json", RESULTS_DIR / f"{stem}.md"
