"""Memory for every benchmark: is an exception an out-of-memory, freeing and reading the device's peak,
the CPU stand-ins for a peak (live tensor bytes through the dispatcher, the process's RSS growth)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# what the allocators say when they give up: CUDA's caching allocator, the CPU allocator (c10's
# DefaultCPUAllocator: "can't allocate memory: you tried to allocate N bytes")
OOM_MESSAGES = ("out of memory", "can't allocate memory")


def is_oom(exc: BaseException) -> bool:
    """The one out-of-memory test: torch's OutOfMemoryError (CUDA), or any error whose message is an
    allocator's refusal (the CPU allocator raises a plain RuntimeError)."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t)
    return isinstance(exc, oom_types) or any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (after the queued work, so that it does not count); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset_peak, in GiB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class PeakTensorBytes(TorchDispatchMode):
    """CPU stand-in for torch.cuda.max_memory_allocated over one step: the peak of live tensor-storage
    bytes. Every storage an op returns is tracked by a weak reference to the C++ storage (views and
    in-place results share one); dead ones are swept before and after each op; the storages alive at
    the start (weights, optimizer state, batch) are the baseline. Exact for what autograd and the
    optimizer allocate through the dispatcher; blind to allocator caching (like CUDA's `allocated`,
    not `reserved`) and to code that bypasses the dispatcher, so compiled models are not measured."""

    def __init__(self, alive: list[torch.Tensor]):
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in alive:
            self._add(t)
        self.peak = self.live()

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage._cdata not in self.refs:
            self.refs[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.refs.items() if ref.expired()]:
            del self.refs[key]

    def live(self) -> int:
        return sum(n for _, n in self.refs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        self._sweep()  # a storage freed inside the op may have handed its address to the output
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.live())
        return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_growth_mib(fn: Callable[[], Any]) -> float:
    """Linux: growth of the process's peak RSS during one call of fn (VmHWM reset through
    /proc/self/clear_refs first). Tensors above glibc's 32 MiB mmap threshold go back to the OS when
    freed, so large transient blocks are counted exactly; small ones may reuse freed heap."""
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kb("VmRSS")
    fn()
    return (_rss_kb("VmHWM") - base) / 1024
