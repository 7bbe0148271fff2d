"""The batch planner: the largest micro-batch whose estimated peak fits the GPU, and the micro-batch x
accumulation x GPUs that reaches the global batch exactly."""

from __future__ import annotations

import math
from typing import Any

from modeling import DecoderConfig

from ..batch_plan import BatchPlan
from ..hardware import GPU_MEMORY_GB, canonical_gpu_name
from .memory import ATTENTION_BACKENDS, STRATEGIES, estimate_memory

SAFETY_MARGIN = 0.05  # keep 5% free for what the estimate leaves out (NCCL buffers, allocator spikes, eval batches)


def _divisors(n: int) -> list[int]:
    return sorted({d for k in range(1, int(math.isqrt(n)) + 1) if n % k == 0 for d in (k, n // k)})


def plan_batch(
    gpu: str,
    num_gpus: int,
    preset: str,
    seq_len: int,
    *,
    global_batch_tokens: int | None = None,
    global_batch_sequences: int | None = None,
    strategy: str = "zero1",
    precision: str = "bf16",
    attention: str = "flash",
    activation_checkpointing: bool = False,
    loss: str = "chunked",
    safety_margin: float = SAFETY_MARGIN,
    gpu_memory_gb: float | None = None,
    max_micro_batch: int = 4096,
) -> dict:
    """Largest micro-batch whose estimated peak fits in (1 - margin) of the GPU, then the largest
    micro-batch <= that which divides the per-GPU share of the global batch, and its accumulation:
    global_sequences = micro_batch * accumulation * num_gpus exactly."""
    gpu = canonical_gpu_name(gpu)
    capacity = gpu_memory_gb if gpu_memory_gb is not None else GPU_MEMORY_GB[gpu]
    budget = capacity * (1 - safety_margin)
    config = DecoderConfig.from_preset(preset)
    common = dict(seq_len=seq_len, precision=precision, strategy=strategy, world_size=num_gpus,
                  attention=attention, activation_checkpointing=activation_checkpointing, loss=loss)

    def total(b: int, **over: Any) -> float:
        return estimate_memory(config, micro_batch=b, **{**common, **over})["total_gib"]

    if total(1) > budget:
        alternatives = []
        for ckpt in (False, True):
            for strat in STRATEGIES:
                if (strat, ckpt) != (strategy, activation_checkpointing) and total(1, strategy=strat, activation_checkpointing=ckpt) <= budget:
                    alternatives.append(f"--strategy {strat}" + (" --activation-checkpointing" if ckpt else ""))
        hint = ("; these fit micro-batch 1: " + ", ".join(alternatives)) if alternatives else \
            "; nothing in this model fits: use more GPUs with zero3/fsdp, a shorter --seq-len, or a larger GPU"
        raise ValueError(
            f"{preset} does not fit on one {gpu} ({capacity:g} GiB, {100 * safety_margin:.0f}% kept free) even at "
            f"micro-batch 1 with seq_len {seq_len}, {strategy}, {precision}: estimated {total(1):.1f} GiB{hint}"
        )
    def largest_fit(**over: Any) -> int:
        """The largest micro-batch that fits (0 if none): doubling, then bisection."""
        if total(1, **over) > budget:
            return 0
        lo, hi = 1, 2
        while hi <= max_micro_batch and total(hi, **over) <= budget:
            lo, hi = hi, hi * 2
        hi = min(hi, max_micro_batch + 1)
        while hi - lo > 1:  # total(lo) fits, total(hi) does not (or hi is past the cap)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if total(mid, **over) <= budget else (lo, mid)
        return lo

    max_fit = largest_fit()

    notes: list[str] = []
    if global_batch_tokens is not None:  # sequences, or the one error for a batch that is not whole sequences
        global_batch_sequences = BatchPlan.from_global(seq_len, 1, 1, global_sequences=global_batch_sequences,
                                                       global_tokens=global_batch_tokens).global_sequences
    result: dict[str, Any] = {
        "gpu": gpu, "num_gpus": num_gpus, "gpu_memory_gib": capacity, "safety_margin": safety_margin,
        "budget_gib": budget, "preset": preset, "seq_len": seq_len, "strategy": strategy, "precision": precision,
        "attention": ATTENTION_BACKENDS.get(attention, attention), "activation_checkpointing": activation_checkpointing,
        "loss": loss, "max_micro_batch_fit": max_fit, "memory_at_max_fit_gib": total(max_fit),
    }
    if global_batch_sequences is None:
        micro, accum = max_fit, 1
        notes.append("no global batch given: accumulation 1 at the largest micro-batch that fits")
    else:
        if global_batch_sequences % num_gpus:
            lower = global_batch_sequences // num_gpus * num_gpus
            raise ValueError(
                f"global batch of {global_batch_sequences} sequences is not divisible by {num_gpus} GPUs; "
                f"use {lower or num_gpus} or {lower + num_gpus} sequences"
            )
        per_gpu = global_batch_sequences // num_gpus
        micro = max(d for d in _divisors(per_gpu) if d <= max_fit)
        accum = per_gpu // micro
        if micro < min(max_fit, per_gpu):
            notes.append(
                f"micro-batch {max_fit} fits but does not divide the {per_gpu} sequences per GPU; the largest "
                f"divisor that fits is {micro} (divisors: {', '.join(map(str, _divisors(per_gpu)))})"
            )
    every = None
    if activation_checkpointing:
        # Recompute no more than memory demands: the sparsest every-N (blocks 0, N, 2N, ... recomputed)
        # that still fits this micro-batch; each block not recomputed saves ~1/3 of its step time.
        L = config.num_hidden_layers
        every = max(n for n in range(1, L + 1) if total(micro, activation_checkpointing_every=n) <= budget)
        common["activation_checkpointing_every"] = every
    plan = BatchPlan(seq_len, micro, accum, num_gpus)  # the arithmetic a run with this recipe does
    mem = estimate_memory(config, micro_batch=micro, **common)
    if activation_checkpointing:
        recomputed = mem["activation_model"]["recomputed_layers"]
        if recomputed < L:
            notes.append(f"micro-batch {micro} fits with {recomputed} of {L} blocks recomputed: "
                         f"--activation_checkpointing_every={every}")
        without = largest_fit(activation_checkpointing=False)
        if without >= micro:
            notes.append(f"micro-batch {micro} fits without activation checkpointing too: drop it (no recompute)")
        elif without:
            notes.append(f"without activation checkpointing micro-batch {without} fits (no recompute: ~25% fewer "
                         f"FLOPs per step, more accumulation steps): `batch` without --activation-checkpointing plans it")
    result.update(
        activation_checkpointing_every=every,
        micro_batch=plan.micro_batch, grad_accum_steps=plan.grad_accum_steps,
        global_batch_sequences=plan.global_sequences, tokens_per_iter=plan.tokens_per_iter,
        memory_gib=mem["total_gib"], memory_components_gib=mem["components_gib"],
        divisibility=f"{plan.global_sequences} = {micro} (micro) x {accum} (accum) x {num_gpus} (GPUs)",
        notes=notes,
    )
    return result
