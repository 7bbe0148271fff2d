"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math
from typing import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay iff p.dim() >= 2 (matmul weights, embeddings); biases and norm gains are not decayed (nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fused_adamw_available(params: Iterable[torch.Tensor]) -> bool:
    """torch's fused AdamW kernel runs on CUDA (and CPU in recent torch); one launch for all parameters."""
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters:
        return False
    return all(p.is_cuda for p in params)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
    cpu_offload: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; `fused=None` uses the fused kernel when every parameter is on CUDA.

    cpu_offload: the DeepSpeed config offloads the optimizer to the CPU; DeepSpeed then needs its own
    vectorised CPU AdamW (the same AdamW update, JIT-built on first use) and refuses torch's."""
    groups = param_groups(model, weight_decay)
    if cpu_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    if fused is None:
        fused = fused_adamw_available(p for g in groups for p in g["params"])
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def lr_at(step: int, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Linear warmup from ~0 to max_lr over warmup_iters, cosine decay to min_lr at decay_iters, then flat.

    `step` counts optimizer steps from 0; step 0 already gets lr > 0 (max_lr / warmup_iters)."""
    if warmup_iters > 0 and step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def build_scheduler(optimizer, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int):
    """A LambdaLR over `lr_at` (the optimizer's lr must be max_lr). Step it once per optimizer step.

    Do not hand it to accelerate.prepare: a prepared scheduler steps once per process per optimizer
    step, so with N processes the warmup would run N times too fast."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, max_lr, min_lr, warmup_iters, decay_iters) / max_lr
    )
