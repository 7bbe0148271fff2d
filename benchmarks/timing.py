"""Timing for every benchmark: device sync, timed calls (CUDA events or wall clock), warm-up, interleaved
rounds, host-sync counting, phase timers for the trainer's step, and the statistics of step times.

Standard library at import: torch is imported by the functions that touch a device, so that
`python -m benchmarks.data_bench` (CPU seconds of a tokenizer pipeline) does not load it.
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional


# ----------------------------------------------------------------------------------------------
# Device sync and timed calls
# ----------------------------------------------------------------------------------------------
def synchronize(device: Any) -> None:
    """Wait for the device to finish its queued work (CUDA); nothing on a CPU, which runs ops eagerly."""
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _device_type(device: Any) -> Optional[str]:
    return None if device is None else getattr(device, "type", str(device).split(":")[0])


def time_calls(fn: Callable[[], Any], n: int, device: Any = None, warmup: int = 0) -> list[float]:
    """Seconds per call of `n` calls after `warmup` untimed ones. CUDA: an event pair per call and one
    synchronize after the loop (the host runs ahead, as in training; a host-bound call shows up as GPU
    idle inside its events). Elsewhere: wall clock per call (the device synchronized after each)."""
    for _ in range(warmup):
        fn()
    if _device_type(device) == "cuda":
        import torch

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        synchronize(device)
        for start, end in events:
            start.record()
            fn()
            end.record()
        synchronize(device)  # the only sync: after the timed loop
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def time_total(fn: Callable[[], Any], n: int, warmup: int = 0, device: Any = None) -> float:
    """Wall seconds of `n` back-to-back calls after `warmup` untimed ones (one clock read per loop:
    for calls too short to time one by one, e.g. a data loader's next())."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int, device: Any = None, warmup_rounds: int = 0,
                     setup: Optional[Callable[[], None]] = None) -> dict[str, list[float]]:
    """Each callable once per round, in reversed order every other round, so drifting load on a shared
    machine hits all alike; `setup` runs untimed before each call. Seconds per call, warm-up rounds dropped."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds + warmup_rounds):
        for name, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
            if setup is not None:
                setup()
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup_rounds:
                times[name].append(time.perf_counter() - t0)
    return times


def split_rounds(iters: int, rounds: int) -> list[int]:
    """`iters` steps over at most `rounds` rounds, as evenly as possible: (10, 4) -> [3, 3, 2, 2]."""
    rounds = max(1, min(rounds, iters))
    return [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]


def cpu_seconds() -> float:
    """CPU seconds of this process's threads plus its reaped children (all cores together)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Stopwatch:
    """`with Stopwatch() as sw: ...` -> sw.wall_s and sw.cpu_s of the block (CPU: see cpu_seconds).
    `Stopwatch(device=...)` synchronizes the device on entry and before reading the clock at exit, so the
    block's queued GPU work is in its wall time (one block at a time, e.g. a step whose phases are read
    in between; time_calls is the loop for many calls)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    device: Any = field(default=None, repr=False)

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._cpu0, self._t0 = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # a failing block (e.g. out of memory) keeps its own error
            synchronize(self.device)
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = cpu_seconds() - self._cpu0


def count_host_syncs(fn: Callable[[], Any], device: Any) -> Optional[int]:
    """CUDA only (None elsewhere): synchronizing calls made by one call of fn (torch's sync debug mode
    warns on each)."""
    if _device_type(device) != "cuda":
        return None
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# ----------------------------------------------------------------------------------------------
# Phases of the trainer's step
# ----------------------------------------------------------------------------------------------
@dataclass
class PhaseTimer:
    """Wall seconds per named range of `training.trainer.nvtx` (data_fetch, forward, backward, clip,
    opt_step, sched_step): while `installed()`, every range the trainer opens is also timed here. On
    CUDA each range starts and ends with a synchronize, so the split is exact at the price of a few idle
    microseconds per range (the trainer itself never syncs there): for breakdowns, not for headline speed.
    Without a device it times host wall seconds only, around any call: `with timer("name"): ...`."""

    device: Any = None
    spent: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str, inner: Any = None) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        with contextlib.nullcontext() if inner is None else inner:  # the NVTX range itself (null off CUDA)
            yield
        synchronize(self.device)
        self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0

    @contextlib.contextmanager
    def installed(self) -> Iterator["PhaseTimer"]:
        from training import trainer

        trainer.nvtx.recorder = self
        try:
            yield self
        finally:
            trainer.nvtx.recorder = None

    def take(self) -> dict[str, float]:
        """The seconds recorded since the last take(), and start again from zero."""
        spent, self.spent = self.spent, {}
        return spent


# ----------------------------------------------------------------------------------------------
# Statistics of timed calls
# ----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default): q in [0, 100]."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def step_time_ms(step_times_s: list[float]) -> dict[str, float]:
    """median / min / p90 / mean milliseconds and the count: the median is robust to stragglers, the min
    is the least disturbed step (on a shared CPU contention only ever adds time)."""
    return {
        "median": statistics.median(step_times_s) * 1e3,
        "min": min(step_times_s) * 1e3,
        "p90": percentile(step_times_s, 90) * 1e3,
        "mean": statistics.fmean(step_times_s) * 1e3,
        "n": len(step_times_s),
    }
