"""Wall-clock of a run from its tokens, FLOPs per token, the dense peak table and an MFU."""

from __future__ import annotations

import math
from typing import Sequence

from modeling import DecoderConfig, count_parameters, flops_per_token

from ..hardware import canonical_gpu_name, parse_gpu_setup, peak_flops
from .scaling import TOKENS_PER_PARAM

DEFAULT_SETUPS = ("2xA6000", "8xB200")


def estimate_time(
    preset: str,
    *,
    tokens: float | None = None,
    iters: int | None = None,
    tokens_per_iter: int | None = None,
    seq_len: int = 2048,
    setups: Sequence[str | tuple[int, str]] = DEFAULT_SETUPS,
    mfu: float = 0.4,
    dtype: str = "bf16",
) -> dict:
    """Wall-clock = tokens * flops_per_token / (MFU * dense peak * GPUs), per hardware setup.
    Without tokens or iterations, the Chinchilla target D = 20N (total parameters) is used."""
    if not 0 < mfu <= 1:
        raise ValueError(f"MFU is a fraction in (0, 1], got {mfu} (0.4 is a good dense-training figure)")
    config = DecoderConfig.from_preset(preset)
    config.check_seq_len(seq_len)
    n = count_parameters(config)["total"]
    fpt = flops_per_token(config, seq_len)
    source = "given"
    if tokens is None and iters is not None:
        if not tokens_per_iter:
            raise ValueError("--iters needs --tokens-per-iter (global batch tokens per optimizer step)")
        tokens = float(iters) * tokens_per_iter
    if tokens is None:
        tokens, source = TOKENS_PER_PARAM * n, "Chinchilla target 20 x N (total params)"
    if iters is None and tokens_per_iter:
        iters = math.ceil(tokens / tokens_per_iter)
    rows = []
    for setup in setups:
        count, gpu = parse_gpu_setup(setup) if isinstance(setup, str) else (setup[0], canonical_gpu_name(setup[1]))
        peak = peak_flops(gpu, dtype)
        if peak is None:
            raise ValueError(f"{gpu} has no {dtype} tensor-core peak in training/hardware.py; pick another --dtype")
        tps = mfu * peak * count / fpt
        seconds = tokens / tps
        rows.append({
            "setup": f"{count}x{gpu}", "gpu": gpu, "num_gpus": count, "peak_flops_per_gpu": peak,
            "tokens_per_sec": tps, "tokens_per_sec_per_gpu": tps / count, "tokens_per_hour": tps * 3600,
            "seconds": seconds, "hours": seconds / 3600, "days": seconds / 86400,
            "seconds_per_iter": seconds / iters if iters else None,
        })
    return {
        "preset": preset, "n_params": n, "seq_len": seq_len, "flops_per_token": fpt, "tokens": tokens,
        "tokens_source": source, "iters": iters, "tokens_per_iter": tokens_per_iter, "total_flops": fpt * tokens,
        "mfu": mfu, "dtype": dtype, "setups": rows,
        "formula": "seconds = tokens * flops_per_token / (mfu * peak_flops_per_gpu * num_gpus)",
    }
