"""The precisions a run can train in: one table for the recipe, accelerate, torch and the planners.

Standard library only (the recipe and `--help` import it before torch); `torch_dtype` imports torch
when called. A name is what a user writes (recipe `precision`, planner `--precision`); the table says
what each part of the stack calls it and what it costs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str  # what the recipe and the CLIs call it
    accelerate: str  # accelerate's mixed_precision value
    torch_dtype: str  # attribute of `torch` that matmuls and attention compute in
    compute_bytes: int  # bytes per element of activations and autocast weight copies
    mixed: bool  # fp32 master weights with half-precision compute


PRECISIONS = {
    "bf16": Precision("bf16", accelerate="bf16", torch_dtype="bfloat16", compute_bytes=2, mixed=True),
    "fp16": Precision("fp16", accelerate="fp16", torch_dtype="float16", compute_bytes=2, mixed=True),
    "fp32": Precision("fp32", accelerate="no", torch_dtype="float32", compute_bytes=4, mixed=False),
}
PRECISION_NAMES = tuple(PRECISIONS)


def get_precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISION_NAMES)}")
    return PRECISIONS[name]


def from_accelerate(mixed_precision: str) -> str:
    """Our name for accelerate's mixed_precision value ("no" -> "fp32")."""
    for p in PRECISIONS.values():
        if p.accelerate == str(mixed_precision):
            return p.name
    return str(mixed_precision)


def torch_dtype(name: str):
    import torch

    return getattr(torch, get_precision(name).torch_dtype)
