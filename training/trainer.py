"""The training loop, and only the loop.

One optimizer step = `batch.grad_accum_steps` micro-batches: forward -> backward (accumulate) -> clip ->
optimizer step -> LR schedule step, visible in `train_step` and `_backward_and_step`. Everything cross-cutting (logging,
throughput/MFU, memory, gradient norms, validation, checkpoints, profiling, harness evals) is a
callback in `callbacks.py` that reads the `StepOutput` this loop returns. No host syncs here:
losses and norms stay tensors until a callback reads them on a log step.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from .batch_plan import BatchPlan
from .callbacks import Callback
from .distributed import is_deepspeed
from .nonfinite import NAN_TEST_ENV, NonFiniteError, NonFiniteGuard, global_grad_norm, is_finite


def nvtx(name: str):
    """An NVTX range for Nsight Systems on CUDA; nothing elsewhere. A benchmark that times the step's
    phases sets `nvtx.recorder` (benchmarks/timing.py PhaseTimer): it then wraps and times each range."""
    rng = torch.cuda.nvtx.range(name) if torch.cuda.is_available() else contextlib.nullcontext()
    recorder = getattr(nvtx, "recorder", None)
    return rng if recorder is None else recorder(name, rng)


@dataclass
class TrainState:
    iter: int = 0  # optimizer steps completed
    tokens: int = 0  # tokens trained, all ranks
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def load_dict(self, d: dict) -> None:
        self.iter, self.tokens, self.extra = int(d["iter"]), int(d["tokens"]), dict(d.get("extra", {}))


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss of this rank's micro-batches (a device tensor: no sync)
    lr: float  # learning rate used by this step
    grad_norm: Optional[torch.Tensor]  # pre-clip global norm (None under DeepSpeed: read from the engine)
    finite: Optional[torch.Tensor] = None  # device bool: loss and gradient norm were finite (no sync)
    applied: bool = True  # the optimizer step changed the weights (False: skipped, see nonfinite.py)


class Trainer:
    def __init__(self, *, cfg, accelerator, model, optimizer, scheduler, batch: BatchPlan, train_loader,
                 val_loader=None, tokenizer=None, callbacks: Sequence = (), run_info: Optional[dict] = None):
        """Keyword-only: what each part is, at the call site. `batch` is the run's BatchPlan (its
        accumulation steps and tokens per iteration are read from it, never recomputed)."""
        self.cfg, self.accelerator = cfg, accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.batch = batch
        self.train_loader, self.val_loader, self.tokenizer = train_loader, val_loader, tokenizer
        self.callbacks, self.run_info = list(callbacks), run_info if run_info is not None else {}
        for i, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] ({type(cb).__name__}) is not a training.callbacks.Callback: subclass it")
        self.state = TrainState()
        self.stop_requested = False  # set by SIGTERM/SIGINT on this rank
        self.preempted = False  # the ranks agreed to stop: checkpoint and exit
        self.untimed_s = 0.0  # seconds spent in evals/checkpoints, excluded from throughput
        self._batches: Optional[Iterator] = None
        self._stop_group = None  # see _should_stop
        self._fp16_step_skipped = False  # see _step_was_applied
        self.guard = NonFiniteGuard(cfg.nonfinite_policy, cfg.nonfinite_max_skips, accelerator.device)
        # Test hook (as data_prep's crash hook): "4,5" makes the loss NaN at iterations 4 and 5.
        self._nan_iters = {int(i) for i in os.environ.get(NAN_TEST_ENV, "").split(",") if i.strip()}

    # ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Collective: what fit() does before its first iteration."""
        self._stop_group = self._make_stop_group()
        self._install_signal_handlers()
        self._emit("on_train_start")
        self._batches = iter(self.train_loader)

    def iteration(self) -> StepOutput:
        """One iteration as fit() runs it: the optimizer step with its data fetch, the non-finite guard
        and every callback (logging, evals, checkpoints)."""
        self._emit("on_step_begin")
        out = self.train_step()
        self.state.iter += 1
        self.state.tokens += self.batch.tokens_per_iter
        self._guard_step(out)
        self._emit("on_step_end", out)
        return out

    def fit(self) -> None:
        self.start()
        try:
            while self.state.iter < self.cfg.max_iters:
                self.iteration()
                if self._should_stop():
                    self.preempted = True
                    self.guard.check(self._stop_group)  # no checkpoint from a non-finite state
                    self._emit("on_preempt")
                    break
        except NonFiniteError as exc:
            self.log({"type": "nonfinite", "iter": self.state.iter, "policy": self.cfg.nonfinite_policy,
                      "skipped_steps": self.guard.skipped_steps, "message": str(exc)})
            self._emit("on_train_abort")
            raise
        self._emit("on_train_end")

    def _guard_step(self, out: StepOutput) -> None:
        """Feed the step's verdict to the non-finite guard; at the loop's sync points (before any log
        record, evaluation or checkpoint) ask it, which raises NonFiniteError under policy stop."""
        if out.finite is not None:
            self.guard.observe(self.state.iter, out.finite)
        if self.guard.policy == "skip":
            if out.applied:
                self.guard.step_applied()
            elif self._is_nonfinite_skip():
                self.guard.step_skipped(self.state.iter)
                self.log({"type": "skipped_step", "iter": self.state.iter, "skipped_steps": self.guard.skipped_steps})
        cfg, it = self.cfg, self.state.iter
        if it == cfg.max_iters or it % cfg.log_interval == 0 or any(
                self.is_step(n) for n in (cfg.eval_interval, cfg.checkpoint_interval, cfg.harness_interval)):
            self.guard.check(self._stop_group)

    def _is_nonfinite_skip(self) -> bool:
        """An unapplied step is a non-finite skip, except under fp16 where loss scaling skips overflowing
        steps as a matter of course while it calibrates."""
        return str(self.accelerator.mixed_precision) != "fp16"

    def train_step(self) -> StepOutput:
        self.model.train()
        device = self.accelerator.device
        loss_sum = torch.zeros((), device=device)
        lr = self.scheduler.get_last_lr()[0]
        grad_norm, applied = None, True
        for _ in range(self.batch.grad_accum_steps):
            with nvtx("data_fetch"):
                x, y, *pos = next(self._batches)  # pos: [position_ids] under document_masking
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                docs = {"position_ids": pos[0].to(device, non_blocking=True), "document_masking": True} if pos else {}
            # accumulate(): no gradient all-reduce until the last micro-batch (DDP no_sync; the
            # DeepSpeed engine is told the accumulation boundary). Losses are scaled by 1/steps.
            with self.accelerator.accumulate(self.model):
                with nvtx("forward"):
                    # chunked LM-head loss: the full (tokens x vocab) fp32 logits never exist
                    loss = self.model(input_ids=x, shift_labels=y, return_logits=False, **docs).loss
                    if self.state.iter + 1 in self._nan_iters:
                        loss = loss * float("nan")
                loss_sum += loss.detach()
                if self.accelerator.sync_gradients:
                    grad_norm, applied = self._backward_and_step(loss)
                else:
                    self._backward(loss)
        applied = applied and self._step_was_applied()
        if applied:  # a skipped step (fp16 overflow, non-finite gradients) must not advance the schedule
            with nvtx("sched_step"):
                self.scheduler.step()
        fp16 = str(self.accelerator.mixed_precision) == "fp16"  # overflowing fp16 gradients are routine
        finite = is_finite(loss_sum) if fp16 or grad_norm is None else is_finite(loss_sum, grad_norm)
        if not applied and not fp16:  # DeepSpeed skipped a step with a non-finite gradient norm
            finite = torch.zeros((), dtype=torch.bool, device=device)
        return StepOutput(loss=loss_sum / self.batch.grad_accum_steps, lr=lr, grad_norm=grad_norm, finite=finite,
                          applied=applied)

    def _backward(self, loss: torch.Tensor) -> None:
        with nvtx("backward"):
            if is_deepspeed(self.accelerator):
                self.model.set_gradient_accumulation_boundary(is_boundary=False)
                self.model.backward(loss)  # scales by 1/accumulation itself
            else:
                self.accelerator.backward(loss)

    def _backward_and_step(self, loss: torch.Tensor) -> tuple[Optional[torch.Tensor], bool]:
        """The last micro-batch: backward (gradients reduced), callbacks may read them, clip, step, zero.
        Returns the pre-clip gradient norm (None where the engine keeps it) and whether the step was
        applied (policy skip: not when the norm is non-finite; see nonfinite.py)."""
        grad_norm = None
        skip_policy = self.guard.policy == "skip" and str(self.accelerator.mixed_precision) != "fp16"
        if is_deepspeed(self.accelerator):
            # accelerate's DeepSpeed backward, split open so that callbacks see the reduced gradients
            # before the engine's step (which clips by the DS config's gradient_clipping, steps, zeroes).
            engine = self.model
            with nvtx("backward"):
                engine.set_gradient_accumulation_boundary(is_boundary=True)
                engine.backward(loss)
            self._emit("on_before_optimizer_step")
            # ZeRO-1/2/3 optimizers skip a step with a non-finite norm themselves (`overflow`); a plain
            # ZeRO-0 optimizer applies anything, so under policy skip the guard asks first (one sync).
            if skip_policy and not hasattr(engine.optimizer, "overflow"):
                norm = global_grad_norm(engine.module)
                if not bool(torch.isfinite(norm)):
                    engine.zero_grad()
                    return norm, False
            with nvtx("opt_step"):
                engine.step()
            return None, bool(engine.was_step_applied())  # a host bool: DeepSpeed has already synced
        with nvtx("backward"):
            self.accelerator.backward(loss)
        self._emit("on_before_optimizer_step")
        if self.cfg.grad_clip > 0 or skip_policy:
            with nvtx("clip"):  # max_norm=inf: the norm alone (grad_clip 0 under policy skip)
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        if skip_policy and not bool(torch.isfinite(grad_norm)):  # the norm is global: every rank agrees
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, False
        scaler = getattr(self.accelerator, "scaler", None)  # fp16 only
        scale = scaler.get_scale() if scaler is not None else None  # a host sync: fp16 only
        with nvtx("opt_step"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        # The scaler halves its scale exactly when it skipped the update for inf/nan gradients; with the
        # fused AdamW the kernel skips on the device and accelerate's own skipped-flag stays False.
        self._fp16_step_skipped = scale is not None and scaler.get_scale() < scale
        return grad_norm, True

    def _step_was_applied(self) -> bool:
        """False when fp16 loss scaling skipped the update (inf/nan gradients): the LR schedule must
        not advance then, or every overflow would shorten warm-up. Asked only under fp16, the one
        precision that skips steps (the question costs a host sync there)."""
        if str(self.accelerator.mixed_precision) != "fp16" or is_deepspeed(self.accelerator):
            return True  # DeepSpeed's answer came back from _backward_and_step
        return not self._fp16_step_skipped

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the first `eval_iters` micro-batches per rank, the same batches at
        every evaluation: the val loader is a finite stream that starts over at each iteration and is
        never checkpointed, so a resumed run scores exactly what an uninterrupted one does."""
        self.model.eval()
        device = self.accelerator.device
        total, seqs = torch.zeros((), device=device), torch.zeros((), device=device)
        # zip with the range first: stops after eval_iters batches without fetching one more
        for _, (x, y, *pos) in zip(range(self.cfg.eval_iters), self.val_loader):
            # under document_masking the val loader yields position_ids too: scored as trained
            docs = {"position_ids": pos[0].to(device, non_blocking=True), "document_masking": True} if pos else {}
            loss = self.model(input_ids=x.to(device, non_blocking=True), shift_labels=y.to(device, non_blocking=True),
                              **docs).loss
            total += loss * x.shape[0]
            seqs += x.shape[0]
        # Summed over ranks, weighted by sequences: a short last batch, or a rank with fewer val
        # batches (the split ran out), counts for what it holds.
        total, seqs = self.accelerator.reduce(torch.stack([total, seqs]), reduction="sum")
        self.model.train()
        return float((total / seqs.clamp_min(1)).item())  # sync: eval steps only

    # ---------------------------------------------------------------------------------------------
    def is_step(self, interval: int) -> bool:
        return interval > 0 and self.state.iter % interval == 0

    @contextlib.contextmanager
    def untimed(self):
        """Wrap work (evals, checkpoints) whose time must not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.untimed_s += time.perf_counter() - start

    def log(self, record: dict[str, Any]) -> None:
        """The one metrics path, callable on any rank: every record of the run (the loop's own and every
        callback's; types in training/run_log.py) goes here. Rank 0 hands it to the callbacks' on_log
        (JsonlLogger: run log, console line, trackers); the other ranks drop it, as their records would
        repeat rank 0's (values are reduced across ranks before they are logged)."""
        if self.accelerator.is_main_process:
            for cb in self.callbacks:  # directly: mostly called from inside a hook that _emit is running
                cb.on_log(self, record)

    def _emit(self, hook: str, *args) -> None:
        """Call `hook` (a Callback method name) on every callback: each is a Callback, so each has it."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, frame):
            self.stop_requested = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, request_stop)

    def _should_stop(self) -> bool:
        """Agree across ranks on stopping, at the end of every step, without waiting on the GPU:
        torchrun kills the workers 30 s after forwarding SIGTERM, so waiting for a log step could miss
        the window. The flag is a CPU tensor all-reduced over a gloo group (the default group on CPU, a
        side group next to NCCL): the host waits only for the other ranks' hosts, never for a device."""
        if self.accelerator.num_processes == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)])
        dist.all_reduce(flag, group=self._stop_group)
        return bool(flag.item() > 0)  # a CPU tensor: no device sync

    def _make_stop_group(self):
        """Collective (every rank, same point): gloo for the stop flag. On multi-node NCCL runs gloo
        needs a routable interface: set GLOO_SOCKET_IFNAME if the hostname resolves to loopback."""
        if self.accelerator.num_processes == 1:
            return None
        return dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
