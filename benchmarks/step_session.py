"""One run of the training-step benchmark: every variant from the same source weights and batch, timed
one after another (CUDA) or in interleaved rounds (CPU); a variant's failure is its row's, not the run's."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from modeling import DecoderConfig, DecoderForCausalLM
from training.batch_plan import BatchPlan

from .memory import cuda_peak_gib, free_device_memory, is_oom, reset_peak
from .step_runner import (
    Runner, Variant, build_runner, cpu_step_peak_bytes, find_max_micro_batch, make_batch, profile_runner,
)
from .timing import Stopwatch, count_host_syncs, split_rounds, time_calls

logger = logging.getLogger("benchmarks.step")

# the CLI's defaults per device; --micro-batch auto on a CPU is the CPU default (no search there)
CPU_DEFAULTS = dict(seq_len=256, micro_batch=4, warmup=3, iters=20, rounds=4)
CUDA_DEFAULTS = dict(seq_len=2048, micro_batch=1, warmup=5, iters=30, rounds=1)


def plan_variants(attns: list[str], compiles: list[bool], losses: list[str], native: bool) -> list[Variant]:
    variants = []
    for attn in attns:
        for comp in compiles:
            variants += [Variant("ours", attn, comp, loss) for loss in losses]
            if native:
                variants.append(Variant("native", attn, comp, "full"))
    return variants


class Session:
    """Per variant: `prepare` (build, size the micro-batch, warm up and compile, count host syncs),
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
            if comp:  # every variant's blocks share their class's forward code: drop the group's graphs so that
                torch._dynamo.reset()  # later groups never reach the recompile limit and silently run eager

    def fail(self, v: Variant, status: str, exc: BaseException) -> None:
        self.rows[v.label].update(status=status, reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        logger.warning("%s %s: %s", v.label, status, self.rows[v.label]["reason"])
        self.runners.pop(v.label, None)
        self.batches.pop(v.label, None)
        free_device_memory(self.device)

    def prepare(self, v: Variant) -> None:
        args, row = self.args, self.rows[v.label]
        reset_peak(self.device)  # peak over build + warm-up + timed steps, read in finish()
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
            plan = BatchPlan(args.seq_len, mb, grad_accum_steps=1, world_size=1)  # one micro-batch per step
            ids = make_batch(plan.micro_batch, plan.seq_len, self.config.vocab_size, self.device, args.seed)
            with Stopwatch(device=self.device) as warmup:
                first = runner.step(ids)
                for _ in range(args.warmup - 1):
                    runner.step(ids)
            row["warmup_s"] = warmup.wall_s
            row["loss_first_step"] = float(first)  # a host sync, outside the timed loop
            row["host_syncs_per_step"] = count_host_syncs(lambda: runner.step(ids), self.device)
        except Exception as exc:  # noqa: BLE001 - compile failures, OOM: reported per row
            return self.fail(v, "oom" if is_oom(exc) else "error", exc)
        self.batches[v.label] = ids
        row.update(micro_batch=plan.micro_batch, seq_len=plan.seq_len, tokens_per_step=plan.tokens_per_iter)
        row["peak_memory_gb"], row["memory_kind"] = None, None
        if self.device.type == "cpu" and not v.compile:  # one more (untimed) step, tracked op by op
            row["peak_memory_gb"] = cpu_step_peak_bytes(runner, ids) / 2**30
            row["memory_kind"] = "cpu_peak_live_tensor_bytes"
        elif self.device.type == "cuda":
            row["memory_kind"] = "cuda_max_memory_allocated"

    def measure(self, v: Variant, n: int) -> None:
        if v.label not in self.runners:
            return
        runner, ids = self.runners[v.label], self.batches[v.label]
        try:
            self.times[v.label] += time_calls(lambda: runner.step(ids), n, self.device)
        except Exception as exc:  # noqa: BLE001
            self.fail(v, "oom" if is_oom(exc) else "error", exc)

    def finish(self, v: Variant) -> None:
        if v.label in self.runners:
            if self.device.type == "cuda":  # the peak over build + warm-up + timed steps, this variant alone
                self.rows[v.label]["peak_memory_gb"] = cuda_peak_gib(self.device)
            if self.args.profile:
                self.profiles.append(profile_runner(self.runners[v.label], self.batches[v.label],
                                                    self.args.profile_steps, Path(self.args.profile)))
        self.runners.pop(v.label, None)
        self.batches.pop(v.label, None)
        free_device_memory(self.device)
