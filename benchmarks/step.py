"""Training-step throughput of our decoder against the native transformers model with the same weights.

    python -m training.benchmark --preset tiny-llama --device cpu --json out.json
    python -m training.benchmark --preset tiny-llama --set hidden_size=256 num_hidden_layers=4 vocab_size=32000
    python -m training.benchmark --preset llama3-1.5b --device cuda --dtype bf16 --seq-len 2048 \\
        --micro-batch auto --attn sdpa,flash_attention_2 --compile off,on --tag llama3-1.5b

One timed step is what training does per micro-batch: forward with labels -> backward -> AdamW step
(`training.optim.build_optimizer`, fused on CUDA) -> zero_grad. Every variant (ours with the chunked
or the full-logits loss, the native `modeling.to_hf` model; per attention backend and compile
setting) starts from the same weights and the same batch, warms up, then times `--iters` steps:
CUDA events around each step on a GPU (no host sync inside the loop), perf_counter (+ synchronize)
otherwise. We report the median step time (and min / p90), tokens/s, achieved TFLOP/s from
`modeling.flops_per_token` (PaLM definition, see README "Models"), MFU against
`training.hardware.peak_flops` (null on CPU), peak memory, and ours/native ratios.

On CPU the variants of one configuration are timed in interleaved rounds (A B A B ...), so a noisy
neighbour slows both sides alike; on CUDA they run one after another, each alone on the GPU, so that
peak memory is per variant and the largest micro-batch of each can be found (`--micro-batch auto`).
Output: a table on stdout, and JSON + markdown (default benchmarks/results/<device>-<date>[-<tag>]).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import platform
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from modeling import (
    FLOPS_DEFINITION, DecoderConfig, DecoderForCausalLM, count_parameters, flops_per_token, mfu,
    resolve_attn_implementation, to_hf,
)
from modeling.describe import ARCH_FIELDS, parse_overrides
from modeling.losses import auto_chunk_size
from training.hardware import canonical_gpu_name, detect_device, peak_flops
from training.optim import build_optimizer

logger = logging.getLogger("training.benchmark")

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTN_CHOICES = ("eager", "sdpa", "flash_attention_2")
LOSS_CHOICES = ("chunked", "full")  # ours: chunked LM-head CE (return_logits=False) or full logits + CE
CPU_DEFAULTS = dict(seq_len=256, micro_batch=4, warmup=3, iters=20, rounds=4)
CUDA_DEFAULTS = dict(seq_len=2048, micro_batch=1, warmup=5, iters=30, rounds=1)
MAX_AUTO_MICRO_BATCH = 64
MEMORY_KINDS = {
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated over build, warm-up and timed steps, "
                                 "each variant alone on the GPU",
    "cpu_peak_live_tensor_bytes": "peak of live tensor bytes (weights, AdamW state, activations, gradients) "
                                  "over one step, tracked op by op through the dispatcher; not measured under compile",
}


# ----------------------------------------------------------------------------------------------
# Arithmetic (pure functions: tested against hand-computed values)
# ----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default): q in [0, 100]."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def throughput_metrics(
    step_times_s: list[float], tokens_per_step: int, flops_per_tok: float, peak_flops_per_sec: Optional[float]
) -> dict[str, Any]:
    """Step-time statistics and the rates derived from the median step (robust to stragglers).

    tokens/s = tokens_per_step / median;  TFLOP/s = tokens/s * flops_per_tok / 1e12;
    MFU = tokens/s * flops_per_tok / peak (None without a peak, e.g. on CPU)."""
    median = statistics.median(step_times_s)
    tokens_per_sec = tokens_per_step / median
    return {
        "step_time_ms": {
            "median": median * 1e3,
            "min": min(step_times_s) * 1e3,
            "p90": percentile(step_times_s, 90) * 1e3,
            "mean": statistics.fmean(step_times_s) * 1e3,
            "n": len(step_times_s),
        },
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_best_step": tokens_per_step / min(step_times_s),  # the least disturbed step
        "tflops": tokens_per_sec * flops_per_tok / 1e12,
        "mfu": mfu(tokens_per_sec, flops_per_tok, peak_flops_per_sec),
    }


def split_rounds(iters: int, rounds: int) -> list[int]:
    """`iters` steps over at most `rounds` rounds, as evenly as possible: (10, 4) -> [3, 3, 2, 2]."""
    rounds = max(1, min(rounds, iters))
    return [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


# ----------------------------------------------------------------------------------------------
# Device, peak FLOPs, memory
# ----------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


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
    peak_dtype = "tf32" if dtype == "fp32" and torch.backends.cuda.matmul.allow_tf32 else dtype
    return {"label": slug(gpu or name), "name": name, "peak_flops": peak_flops(gpu, peak_dtype) if gpu else None,
            "peak_dtype": peak_dtype, "detected": detect_device()}


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------------------------
# Variants and the training step
# ----------------------------------------------------------------------------------------------
@dataclass
class Variant:
    impl: str  # "ours" | "native"
    attn: str
    compile: bool
    loss: str  # ours: "chunked" | "full"; native: "full" (HF's ForCausalLMLoss)

    @property
    def label(self) -> str:
        return f"{self.impl}/{self.attn}/compile-{'on' if self.compile else 'off'}/{self.loss}"

    @property
    def group(self) -> tuple[str, bool]:
        return (self.attn, self.compile)


@dataclass
class Runner:
    """A model on the device with its optimizer, and one training step over a given batch."""

    variant: Variant
    model: torch.nn.Module
    forward: Callable  # the compiled model or the model itself
    optimizer: torch.optim.Optimizer
    amp_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]
    native_class: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def step(self, ids: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """forward(labels) -> backward -> optimizer step -> zero_grad; returns the loss (no host sync)."""
        fwd = self.model if eager else self.forward
        with torch.autocast(ids.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            loss = fwd(input_ids=ids, labels=ids, **self.extra).loss  # only the loss: logits die after forward
        if self.scaler is not None:  # fp16: loss scaling (the fused AdamW reads found_inf on device: no sync)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def build_runner(src: DecoderForCausalLM, variant: Variant, device: torch.device, dtype: str, precision: str) -> Runner:
    """Copy `src` (CPU, fp32) into the variant's model on `device`. Raises ImportError for an
    unavailable attention backend and NotExportableError when the native class cannot hold the config."""
    # ImportError with the reason if unavailable here (flash_attn: also for an fp32 run)
    attn, _ = resolve_attn_implementation(variant.attn, compute_dtype=DTYPES[dtype])
    ours = copy.deepcopy(src)
    ours.config._attn_implementation = attn  # read at every forward; HF's setter refuses our (direct) backends
    native_class = None
    if variant.impl == "native":
        model = to_hf(ours)  # same weights; eager -> eager, else sdpa
        del ours
        native_class = type(model).__name__
    else:
        model = ours
    torch_dtype = DTYPES[dtype]
    model.to(device=device, dtype=torch_dtype if precision == "pure" else torch.float32)
    if variant.impl == "native" and variant.attn == "flash_attention_2":
        model.set_attn_implementation("flash_attention_2")  # after the move: HF checks the device
    model.train()
    amp_dtype = torch_dtype if precision == "amp" and torch_dtype != torch.float32 else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    optimizer = build_optimizer(model, lr=1e-4)
    forward = torch.compile(model) if variant.compile else model
    extra = {"return_logits": variant.loss == "full"} if variant.impl == "ours" else {}
    return Runner(variant, model, forward, optimizer, amp_dtype, scaler, native_class, extra)


def cpu_step_peak_bytes(runner: Runner, ids: torch.Tensor) -> int:
    """Peak live tensor bytes of one step (weights, AdamW state and batch included), see PeakTensorBytes."""
    alive = [*runner.model.parameters(), *runner.model.buffers(), ids]
    alive += [t for state in runner.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    with PeakTensorBytes(alive) as tracker:
        runner.step(ids)
    return tracker.peak


def make_batch(micro_batch: int, seq_len: int, vocab_size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (micro_batch, seq_len), generator=g).to(device)


def time_steps(runner: Runner, ids: torch.Tensor, n: int) -> list[float]:
    """Seconds per step. CUDA: an event pair per step, one synchronize at the end (the host runs
    ahead, as in training; a host-bound step shows up as GPU idle inside the events). CPU: wall clock."""
    device = ids.device
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        synchronize(device)
        for start, end in events:
            start.record()
            runner.step(ids)
            end.record()
        synchronize(device)  # the only sync: after the timed loop
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.step(ids)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def count_host_syncs(runner: Runner, ids: torch.Tensor) -> Optional[int]:
    """CUDA only: synchronizing calls made during one step (torch's sync debug mode warns on each)."""
    if ids.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.step(ids)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(ids.device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def find_max_micro_batch(runner: Runner, seq_len: int, vocab: int, device: torch.device, seed: int, cap: int) -> int:
    """Largest power-of-two micro-batch whose eager step fits (CUDA). The first step at 1 allocates the
    optimizer state, so each probe sees weights + grads + AdamW moments + activations. The probes'
    updates are undone afterwards (weights restored, optimizer and loss-scale state reset), so every
    variant's timed steps start from the same weights whatever its search did."""
    weights = {k: t.detach().to("cpu", copy=True) for k, t in runner.model.state_dict().items()}
    try:
        return _probe_micro_batches(runner, seq_len, vocab, device, seed, cap)
    finally:
        runner.model.load_state_dict(weights)
        runner.optimizer.state.clear()  # AdamW's moments and step count start again at the first timed step
        if runner.scaler is not None:
            runner.scaler = torch.amp.GradScaler(device.type)
        free_device_memory(device)
        if device.type == "cuda":  # the search's failed probe must not count as this variant's peak
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)


def _probe_micro_batches(runner: Runner, seq_len: int, vocab: int, device: torch.device, seed: int, cap: int) -> int:
    best = 0
    mb = 1
    while mb <= cap:
        try:
            runner.step(make_batch(mb, seq_len, vocab, device, seed), eager=True)
            synchronize(device)
            best = mb
            mb *= 2
        except Exception as exc:  # noqa: BLE001 - only OOM ends the search; anything else is real
            if not is_oom(exc):
                raise
            break
        finally:
            runner.optimizer.zero_grad(set_to_none=True)
            free_device_memory(device)
    if best == 0:
        raise torch.cuda.OutOfMemoryError(f"micro-batch 1 at seq_len {seq_len} does not fit")
    return best


def profile_runner(runner: Runner, ids: torch.Tensor, steps: int, out_dir: Path) -> str:
    """A chrome trace of `steps` steps in out_dir/<label>.json; returns the top-ops table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ids.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            runner.step(ids)
        synchronize(ids.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / (slug(runner.variant.label) + ".json")
    prof.export_chrome_trace(str(trace))
    sort_by = "self_cuda_time_total" if ids.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=15)
    return f"profile of {runner.variant.label} ({steps} steps), trace: {trace}\n{table}"


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------
def parse_set(text: str, choices: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown value(s) {bad or text!r}; choose from {', '.join(choices)}")
    return list(dict.fromkeys(items))


def plan_variants(attns: list[str], compiles: list[bool], losses: list[str], native: bool) -> list[Variant]:
    variants = []
    for attn in attns:
        for comp in compiles:
            variants += [Variant("ours", attn, comp, loss) for loss in losses]
            if native:
                variants.append(Variant("native", attn, comp, "full"))
    return variants


class Session:
    """One benchmark run: every variant of `plan_variants`, from the same source weights and batch.

    Per variant: `prepare` (build, size the micro-batch, warm up and compile, count host syncs),
    `measure` (timed steps; called once, or once per round when interleaving), `finish` (peak memory,
    optional profile, free). A failure marks that variant's row (skipped / oom / error, with the
    reason) and the run goes on."""

    def __init__(self, args: argparse.Namespace, config: DecoderConfig, device: torch.device):
        self.args, self.config, self.device = args, config, device
        torch.manual_seed(args.seed)
        self.src = DecoderForCausalLM(config).eval()  # fp32 on CPU: every variant starts from these weights
        self.variants = plan_variants(args.attn, args.compile, args.loss, not args.no_native)
        self.rows: dict[str, dict[str, Any]] = {v.label: self._row(v) for v in self.variants}
        self.times: dict[str, list[float]] = {v.label: [] for v in self.variants}
        self.runners: dict[str, Runner] = {}
        self.batches: dict[str, torch.Tensor] = {}
        self.profiles: list[str] = []

    @staticmethod
    def _row(v: Variant) -> dict[str, Any]:
        return {"label": v.label, "impl": v.impl, "attn": v.attn, "compile": v.compile, "loss": v.loss,
                "status": "ok", "reason": None, "native_class": None}

    def run(self) -> None:
        groups: dict[tuple, list[Variant]] = {}
        for v in self.variants:
            groups.setdefault(v.group, []).append(v)
        for i, ((attn, comp), members) in enumerate(groups.items(), 1):
            logger.info("[%d/%d] attn=%s compile=%s: %s", i, len(groups), attn, "on" if comp else "off",
                        ", ".join(v.label for v in members))
            if self.args.interleave:  # all alive at once, timed in alternating rounds
                for v in members:
                    self.prepare(v)
                for r, n in enumerate(split_rounds(self.args.iters, self.args.rounds)):
                    for v in (members if r % 2 == 0 else members[::-1]):  # alternate who goes first
                        self.measure(v, n)
                for v in members:
                    self.finish(v)
            else:  # one at a time, alone on the device
                for v in members:
                    self.prepare(v)
                    self.measure(v, self.args.iters)
                    self.finish(v)
            if comp:  # every variant shares forward's code objects: drop the group's graphs so that later
                torch._dynamo.reset()  # groups never reach the recompile limit and silently run eager

    def fail(self, v: Variant, status: str, exc: BaseException) -> None:
        self.rows[v.label].update(status=status, reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        logger.warning("%s %s: %s", v.label, status, self.rows[v.label]["reason"])
        self.runners.pop(v.label, None)
        self.batches.pop(v.label, None)
        free_device_memory(self.device)

    def prepare(self, v: Variant) -> None:
        args, row = self.args, self.rows[v.label]
        if self.device.type == "cuda":  # peak over build + warm-up + timed steps, read in finish()
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            runner = build_runner(self.src, v, self.device, args.dtype, args.precision)
        except (ImportError, ValueError) as exc:  # backend unavailable here, or not expressible natively
            return self.fail(v, "skipped", exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the weights alone do not fit
            return self.fail(v, "oom" if is_oom(exc) else "error", exc)
        row["native_class"] = runner.native_class
        self.runners[v.label] = runner
        try:
            mb = args.micro_batch
            if mb == "auto":
                mb = CPU_DEFAULTS["micro_batch"] if self.device.type != "cuda" else find_max_micro_batch(
                    runner, args.seq_len, self.config.vocab_size, self.device, args.seed, args.max_micro_batch)
            ids = make_batch(mb, args.seq_len, self.config.vocab_size, self.device, args.seed)
            t0 = time.perf_counter()
            first = runner.step(ids)
            for _ in range(args.warmup - 1):
                runner.step(ids)
            synchronize(self.device)
            row["warmup_s"] = time.perf_counter() - t0
            row["loss_first_step"] = float(first)  # a host sync, outside the timed loop
            row["host_syncs_per_step"] = count_host_syncs(runner, ids)
        except Exception as exc:  # noqa: BLE001 - compile failures, OOM: reported per row
            return self.fail(v, "oom" if is_oom(exc) else "error", exc)
        self.batches[v.label] = ids
        row.update(micro_batch=mb, seq_len=args.seq_len, tokens_per_step=mb * args.seq_len)
        row["peak_memory_gb"], row["memory_kind"] = None, None
        if self.device.type == "cpu" and not v.compile:  # one more (untimed) step, tracked op by op
            row["peak_memory_gb"] = cpu_step_peak_bytes(runner, ids) / 2**30
            row["memory_kind"] = "cpu_peak_live_tensor_bytes"
        elif self.device.type == "cuda":
            row["memory_kind"] = "cuda_max_memory_allocated"

    def measure(self, v: Variant, n: int) -> None:
        if v.label not in self.runners:
            return
        try:
            self.times[v.label] += time_steps(self.runners[v.label], self.batches[v.label], n)
        except Exception as exc:  # noqa: BLE001
            self.fail(v, "oom" if is_oom(exc) else "error", exc)

    def finish(self, v: Variant) -> None:
        if v.label in self.runners:
            if self.device.type == "cuda":  # the peak over build + warm-up + timed steps, this variant alone
                self.rows[v.label]["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            if self.args.profile:
                self.profiles.append(profile_runner(self.runners[v.label], self.batches[v.label],
                                                    self.args.profile_steps, Path(self.args.profile)))
        self.runners.pop(v.label, None)
        self.batches.pop(v.label, None)
        free_device_memory(self.device)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every variant; returns the result document (rows, ratios, summary) written as JSON."""
    device = torch.device(args.device)
    overrides = parse_overrides(args.set or [])
    try:
        config = DecoderConfig.from_preset(args.preset, **overrides)
    except (KeyError, ValueError) as exc:  # unknown preset or field, wrong type or value: named in the message
        raise SystemExit(f"--preset {args.preset} --set {' '.join(args.set or []) or '(none)'}: "
                         f"{exc.args[0] if exc.args else exc}")
    if args.seq_len > config.max_position_embeddings and config.position_embedding == "learned":
        raise SystemExit(f"--seq-len {args.seq_len} exceeds max_position_embeddings={config.max_position_embeddings} "
                         "of the learned position table; lower --seq-len or --set max_position_embeddings=...")
    dev = device_info(device, args.dtype)
    fpt = flops_per_token(config, args.seq_len)
    session = Session(args, config, device)
    session.run()
    variants, rows, times, profiles = session.variants, session.rows, session.times, session.profiles

    peak = dev["peak_flops"]
    for v in variants:
        row = rows[v.label]
        if row["status"] == "ok" and times[v.label]:
            row.update(throughput_metrics(times[v.label], row["tokens_per_step"], fpt, peak))
    _add_ratios(rows, variants)
    result = {
        "schema_version": SCHEMA_VERSION,
        "tool": "training.benchmark",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m training.benchmark"] + sys.argv[1:]),
        "device": dev,
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(),
        },
        "settings": {
            "preset": args.preset, "overrides": overrides, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
            "dtype": args.dtype, "precision": args.precision, "warmup": args.warmup, "iters": args.iters,
            "rounds": len(split_rounds(args.iters, args.rounds)) if args.interleave else 1,
            "interleave": args.interleave, "seed": args.seed,
            "optimizer": "training.optim.build_optimizer (AdamW; fused on CUDA)",
            "loss_chunk_size": DecoderForCausalLM.loss_chunk_size or auto_chunk_size(config.vocab_size),
        },
        "model": {
            "architecture": {f: getattr(config, f) for f in ARCH_FIELDS}, "parameters": count_parameters(config)["total"],
            "flops_per_token": fpt, "flops_definition": FLOPS_DEFINITION,
        },
        "rows": [rows[v.label] for v in variants],
    }
    result["summary"] = summarize(result["rows"])
    result["ratio_tokens_per_sec_vs_native"] = result["summary"]["ratio_tokens_per_sec_vs_native"]
    if profiles:
        result["profile_dir"], result["profiles"] = str(args.profile), profiles
    return result


def _add_ratios(rows: dict[str, dict], variants: list[Variant]) -> None:
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
# Output
# ----------------------------------------------------------------------------------------------
def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


MD_HEADER = ("| variant | mb | step ms median (min / p90) | tokens/s | TFLOP/s | MFU | peak mem GB "
             "| ours/native tok/s (best step) | first loss |\n|---|---:|---|---:|---:|---:|---:|---|---:|")


def _md_row(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"| {r['label']} | | {r['status']}: {r['reason']} | | | | | | |"
    st = r["step_time_ms"]
    mfu_pct = None if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    ratio = _fmt(r["ratio_tokens_per_sec_vs_native"], ".3f")
    if r["ratio_best_step_vs_native"] is not None:
        ratio += f" ({r['ratio_best_step_vs_native']:.3f})"
    return (f"| {r['label']} | {r['micro_batch']} | {st['median']:.2f} ({st['min']:.2f} / {st['p90']:.2f}) "
            f"| {r['tokens_per_sec']:,.0f} | {r['tflops']:.3f} | {mfu_pct or '-'} | {_fmt(r['peak_memory_gb'], '.3f')} "
            f"| {ratio} | {_fmt(r['loss_first_step'], '.4f')} |")


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
        MD_HEADER,
        *(_md_row(r) for r in result["rows"]),
        "",
        f"ours/native tokens/s: worst {_fmt(sm['ratio_tokens_per_sec_vs_native'], '.3f')}, geomean "
        f"{_fmt(sm['ratio_tokens_per_sec_vs_native_geomean'], '.3f')}, best "
        f"{_fmt(sm['ratio_tokens_per_sec_vs_native_max'], '.3f')} (from median steps; from the fastest steps, "
        f"geomean {_fmt(sm['ratio_best_step_vs_native_geomean'], '.3f')}).  ",
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


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="tiny-llama", help="modeling preset (default: tiny-llama)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="DecoderConfig field overrides")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 256 on CPU, 2048 on CUDA)")
    p.add_argument("--micro-batch", help="sequences per step, or 'auto' (CUDA: largest power of two that fits, "
                   "searched per variant without compile); default 4 on CPU, 1 on CUDA")
    p.add_argument("--max-micro-batch", type=int, default=MAX_AUTO_MICRO_BATCH, help="upper bound of --micro-batch auto")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="compute dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--precision", choices=("amp", "pure"), default="amp",
                   help="amp: fp32 weights + autocast(dtype) (accelerate's mixed precision; fp16 adds a GradScaler); "
                        "pure: weights and AdamW state in dtype")
    p.add_argument("--attn", default="eager,sdpa,flash_attention_2", help="comma-separated attention backends; "
                   "unavailable ones are reported as skipped with the reason")
    p.add_argument("--compile", default="off", help="comma-separated subset of off,on (torch.compile of the model)")
    p.add_argument("--loss", default="chunked", help="ours' loss path(s), comma-separated subset of chunked,full: "
                   "chunked = forward(..., return_logits=False), full = logits + cross-entropy (as native)")
    p.add_argument("--no-native", action="store_true", help="skip the native transformers model")
    p.add_argument("--warmup", type=int, help="untimed steps per variant (compile happens here); default 3 CPU, 5 CUDA")
    p.add_argument("--iters", type=int, help="timed steps per variant; default 20 CPU, 30 CUDA")
    p.add_argument("--rounds", type=int, help="CPU: split the timed steps into this many interleaved rounds (default 4)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="time the variants of one configuration in alternating rounds, all alive at once "
                        "(default: on for CPU, off for CUDA where each runs alone for memory and batch size)")
    p.add_argument("--threads", type=int, help="CPU: torch.set_num_threads (default: torch's choice). On a shared "
                   "machine 1 thread is far steadier than an oversubscribed pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", metavar="DIR", help="also profile --profile-steps steps of each variant: chrome "
                   "traces in DIR, top-ops tables on stdout")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--json", metavar="FILE",
                   help="write the JSON here (default: benchmarks/results/<device>-<date>[-<tag>].json)")
    p.add_argument("--md", metavar="FILE", help="write the markdown table here (default: next to the default JSON)")
    p.add_argument("--tag", help="suffix of the default file names, e.g. the preset")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Device-dependent defaults and validation."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    defaults = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for key in ("seq_len", "warmup", "iters", "rounds"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.micro_batch is None:
        args.micro_batch = defaults["micro_batch"]
    elif args.micro_batch != "auto":
        try:
            args.micro_batch = int(args.micro_batch)
        except ValueError:
            raise SystemExit(f"--micro-batch expects a positive integer or 'auto', got {args.micro_batch!r}")
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.interleave is None:
        args.interleave = args.device == "cpu"
    for key in ("seq_len", "warmup", "iters", "rounds"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    args.attn = parse_set(args.attn, ATTN_CHOICES, "--attn")
    args.compile = [c == "on" for c in parse_set(args.compile, ("off", "on"), "--compile")]
    args.loss = parse_set(args.loss, LOSS_CHOICES, "--loss")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = resolve_args(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args)
    if result.get("profiles"):
        print("\n\n".join(result.pop("profiles")))
    md = to_markdown(result)
    print(md)
    json_path, md_path = default_paths(result, args.tag)
    if args.json or args.md:  # explicit paths only: no default files
        json_path, md_path = (Path(args.json) if args.json else None), (Path(args.md) if args.md else None)
    for path, text in ((json_path, json.dumps(result, indent=2) + "\n"), (md_path, md)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            logger.info("wrote %s", path)
    return result


if __name__ == "__main__":
    main()
