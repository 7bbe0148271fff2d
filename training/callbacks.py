"""Cross-cutting work as small callbacks the Trainer calls at fixed points: each subclasses Callback,
whose methods are the hooks (on_train_start, on_step_begin, on_before_optimizer_step, on_step_end,
on_preempt, on_train_abort, on_train_end, on_log).

Each records what it measures through `trainer.log(record)`, the one metrics path: rank 0 hands the
record to JsonlLogger, which appends it to the run log (`<out_dir>/log.jsonl`, training/run_log.py),
prints its console line and feeds the accelerate trackers. Host syncs (`.item()`) happen only on
log/eval/checkpoint steps.
"""

from __future__ import annotations

import difflib
import logging
import math
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from modeling import mfu

from . import checkpoint, run_log
from .distributed import is_deepspeed, params_are_sharded, zero_stage
from .console import format_record
from .nonfinite import LossSpikes, global_grad_norm

if TYPE_CHECKING:
    from .trainer import StepOutput, Trainer

logger = logging.getLogger("training")


# ------------------------------------------------------------------------------------------------
class Callback:
    """The hooks the Trainer calls, in order, each a no-op here: a callback overrides those it needs.
    Every hook runs on every rank unless it says otherwise; one that runs a collective must do so
    on every rank at the same point (they do: the hooks are called at the same step everywhere).

    A method named on_* that is not a hook (a misspelt one would silently never run) is refused
    when its class is defined."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first iteration (after a resume loaded its checkpoint: trainer.state.iter is the
        iteration training continues from)."""

    def on_step_begin(self, trainer: Trainer) -> None:
        """Before each optimizer step's first micro-batch; trainer.state.iter counts the steps done."""

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        """After the last micro-batch's backward (gradients reduced across ranks; under DeepSpeed in
        ZeRO's partitioned buffers), before clipping and the optimizer step."""

    def on_step_end(self, trainer: Trainer, out: StepOutput) -> None:
        """After the step: trainer.state.iter and tokens advanced, the non-finite guard fed. `out` holds
        the step's loss and gradient norm as device tensors (reading them is a host sync)."""

    def on_preempt(self, trainer: Trainer) -> None:
        """The ranks agreed to stop (SIGTERM/SIGINT on one of them) after this step: save what must be
        saved; on_train_end follows."""

    def on_train_abort(self, trainer: Trainer) -> None:
        """The run dies (non-finite loss or gradients under policy stop); the error propagates after."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last iteration: max_iters reached, or stopped after on_preempt."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Rank 0 only: a run-log record passed to trainer.log (training/run_log.py RECORD_TYPES)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("on_") and name not in HOOKS:
                close = difflib.get_close_matches(name, HOOKS, n=1)
                raise TypeError(f"{cls.__name__}.{name} is not a Trainer hook"
                                + (f": did you mean {close[0]}?" if close else f" (hooks: {', '.join(HOOKS)})"))


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


def _tracker_config(trainer) -> dict[str, Any]:
    """What the trackers record as the run's configuration: every scalar recipe key, the run's scalar
    facts (n_params, precision, world_size, ...) and the batch plan as batch/<field>."""
    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}

    info = trainer.run_info
    return {**scalars(trainer.cfg.to_dict()), **scalars(info),
            **{f"batch/{k}": v for k, v in scalars(info.get("batch", {})).items()}}


# ------------------------------------------------------------------------------------------------
class JsonlLogger(Callback):
    """Rank 0, where every trainer.log record arrives: the run log through its one writer
    (training/run_log.py; config record first), a console line per record, the accelerate trackers."""

    def __init__(self, out_dir: str):
        self.writer = run_log.RunLogWriter(run_log.log_path(out_dir))
        self.max_iters = 0
        self._start: Optional[tuple[float, int]] = None  # (wall time, iteration) when this session began

    def on_train_start(self, trainer) -> None:
        acc = trainer.accelerator
        if not acc.is_main_process:
            return
        # a resume cuts back what the killed run logged past its checkpoint; a fresh run in a reused
        # out_dir keeps the old log aside, never mixing them
        self.writer.begin(trainer.state.iter)
        self.max_iters = trainer.cfg.max_iters
        self._start = (time.perf_counter(), trainer.state.iter)
        if trainer.cfg.trackers:  # the run's settings as the trackers' config (hyperparameters), not as metrics
            acc.init_trackers(trainer.cfg.run_name or Path(trainer.cfg.out_dir).name, config=_tracker_config(trainer))
        trainer.log({"type": "config", **trainer.run_info, "start_iter": trainer.state.iter})

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        self._write(record)
        if trainer.cfg.trackers and record["type"] != "config":  # run_log.tracker_metrics: <type>/<field>, iter the step
            metrics = run_log.tracker_metrics(record)
            if metrics:
                trainer.accelerator.log(metrics, step=record.get("iter"))

    def _write(self, record: dict[str, Any]) -> None:
        record = self.writer.write(record)
        elapsed = eta = None
        if record["type"] == "train" and self._start is not None:
            elapsed = time.perf_counter() - self._start[0]
            done = record["iter"] - self._start[1]
            eta = elapsed / done * (self.max_iters - record["iter"]) if done > 0 else None
        line = format_record(record, self.max_iters, elapsed, eta)
        if line:
            logger.info(line)

    def on_train_abort(self, trainer) -> None:
        # Trackers are finished here only when the run dies; a run that ends well finishes them in
        # run.py after the final checkpoint (end_training also destroys the process group, which the
        # checkpoint's collectives still need: called from a callback it cost the final checkpoint).
        for tracker in trainer.accelerator.trackers:
            tracker.finish()


# ------------------------------------------------------------------------------------------------
def memory_stats(device: torch.device) -> dict[str, Optional[float]]:
    """This rank's memory: CUDA allocator figures, or on CPU the process RSS; reserved = null on CPU.
    mem_peak_gb is the peak since the last reset_peak_memory() (each train record resets it), so a
    spike shows in the window that caused it rather than forever after."""
    gb = 1024**3
    if device.type == "cuda":
        return {
            "mem_allocated_gb": torch.cuda.memory_allocated(device) / gb,
            "mem_peak_gb": torch.cuda.max_memory_allocated(device) / gb,
            "mem_reserved_gb": torch.cuda.memory_reserved(device) / gb,
        }
    status = _proc_status_kb()
    if "VmRSS" in status and "VmHWM" in status:  # Linux: VmHWM is resettable through clear_refs
        rss, peak = status["VmRSS"] * 1024, status["VmHWM"] * 1024
    else:
        rss, peak = None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole-run peak
    return {"mem_allocated_gb": None if rss is None else rss / gb, "mem_peak_gb": peak / gb, "mem_reserved_gb": None}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass  # not Linux, or not permitted: the peak stays the whole run's


def _proc_status_kb() -> dict[str, int]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines if line.startswith("Vm"))}


class TrainMetrics(Callback):
    """The `train` record every log_interval iterations: loss, lr, grad norm, speed, MFU, memory.

    Time per iteration is the wall time of the log window divided by its iterations, minus the time
    evals and checkpoints took (they wrap themselves in trainer.untimed()), so no per-step sync."""

    def __init__(self, flops_per_token: float, peak_flops: Optional[float], spikes: Optional[LossSpikes] = None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.spikes = spikes
        self.window_start: Optional[float] = None
        self.window_untimed = 0.0
        self.window_iters = 0
        self.own_grad_norm: Optional[torch.Tensor] = None
        self.reset_memory_peak = False

    @staticmethod
    def _logs(trainer, iteration: int) -> bool:
        return iteration % trainer.cfg.log_interval == 0 or iteration == trainer.cfg.max_iters

    def on_step_begin(self, trainer) -> None:
        if self.window_start is None:
            self.window_start, self.window_untimed = time.perf_counter(), trainer.untimed_s
        if self.reset_memory_peak:
            reset_peak_memory(trainer.accelerator.device)
            self.reset_memory_peak = False

    def on_before_optimizer_step(self, trainer) -> None:
        """DeepSpeed keeps the pre-clip global norm in its ZeRO-1/2/3 and half-precision optimizers; its
        plain fp32 ZeRO-0 path clips without recording it. There, on log steps only, compute it from
        the (already all-reduced, unpartitioned) gradients."""
        acc = trainer.accelerator
        if (zero_stage(acc) == 0 and str(acc.mixed_precision) == "no"
                and self._logs(trainer, trainer.state.iter + 1)):
            self.own_grad_norm = global_grad_norm(acc.unwrap_model(trainer.model))

    def on_step_end(self, trainer, out) -> None:
        self.window_iters += 1
        if not self._logs(trainer, trainer.state.iter):
            return
        acc = trainer.accelerator
        loss = acc.reduce(out.loss.detach(), reduction="mean").item()  # sync: log steps only
        if out.grad_norm is not None:
            grad_norm = float(out.grad_norm)
        elif is_deepspeed(acc):
            norm = trainer.model.get_global_grad_norm()
            if norm is None:
                norm, self.own_grad_norm = self.own_grad_norm, None
            grad_norm = float(norm) if norm is not None else None
        else:
            grad_norm = None
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.window_start - (trainer.untimed_s - self.window_untimed)
        time_ms = 1000 * seconds / self.window_iters
        tokens_per_sec = trainer.batch.tokens_per_iter * self.window_iters / seconds
        per_gpu = tokens_per_sec / acc.num_processes
        record = {
            "type": "train", "iter": trainer.state.iter, "loss": loss, "lr": out.lr, "grad_norm": grad_norm,
            "tokens": trainer.state.tokens, "tokens_per_sec": tokens_per_sec, "tokens_per_sec_per_gpu": per_gpu,
            "tflops": per_gpu * self.flops_per_token / 1e12, "mfu": mfu(per_gpu, self.flops_per_token, self.peak_flops),
            "time_ms": time_ms, **memory_stats(acc.device),
        }
        if trainer.guard.policy == "skip":
            record["skipped_steps"] = trainer.guard.skipped_steps
        self.reset_memory_peak = True  # at the next step's start: after this step's evals and checkpoints
        if not math.isfinite(loss):
            record["nonfinite_loss"] = True
        trainer.log(record)
        zscore = self.spikes.update(loss) if self.spikes is not None else None
        if zscore is not None:
            logger.warning("loss spike at iteration %d: %.4f is %.1f standard deviations above the recent mean",
                           trainer.state.iter, loss, zscore)
            trainer.log({"type": "loss_spike", "iter": trainer.state.iter, "loss": loss,
                                       "zscore": round(zscore, 2)})
        self.window_start, self.window_iters = None, 0


# ------------------------------------------------------------------------------------------------
class LayerGradNorms(Callback):
    """Per-layer gradient norms (before clipping) every N iterations.

    Read in on_before_optimizer_step, when the reduced gradients exist on every backend: p.grad for
    DDP/single process, ZeRO's partitioned buffers under DeepSpeed (`safe_get_full_grad` gathers
    them: a collective, so every rank runs it)."""

    def __init__(self, interval: int):
        self.interval = interval
        self.norms: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer) -> None:
        if self.interval <= 0 or (trainer.state.iter + 1) % self.interval:
            return
        use_ds = is_deepspeed(trainer.accelerator)
        if use_ds:
            from deepspeed.utils import safe_get_full_grad
        sums: dict[str, torch.Tensor] = {}
        for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters():
            g = safe_get_full_grad(p) if use_ds else p.grad
            if g is None:
                continue
            if hasattr(g, "full_tensor"):  # FSDP2 DTensor
                g = g.full_tensor()
            key = _layer_key(name)
            sums[key] = sums.get(key, 0) + g.float().pow(2).sum()
        self.norms = {k: v.sqrt() for k, v in sums.items()}

    def on_step_end(self, trainer, out) -> None:
        if self.norms and trainer.is_step(self.interval):
            record = {"type": "grad_norms", "iter": trainer.state.iter,
                      "layers": {k: float(v) for k, v in self.norms.items()}}  # sync: every N iterations only
            trainer.log(record)
            self.norms = {}


def _layer_key(name: str) -> str:
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        return f"layer_{int(parts[i + 1]):02d}"
    return parts[-2] if len(parts) >= 2 else name


# ------------------------------------------------------------------------------------------------
class Validation(Callback):
    """Validation loss every eval_interval iterations and at the end."""

    def on_step_end(self, trainer, out) -> None:
        cfg = trainer.cfg
        if cfg.eval_interval > 0 and trainer.val_loader is not None and (
            trainer.is_step(cfg.eval_interval) or trainer.state.iter == cfg.max_iters
        ):
            start = time.perf_counter()
            with trainer.untimed():
                val_loss = trainer.evaluate()
            trainer.log({"type": "eval", "iter": trainer.state.iter, "val_loss": val_loss,
                                       "val_ppl": math.exp(min(val_loss, 50.0)),
                                       "time_ms": 1000 * (time.perf_counter() - start)})


class Checkpointer(Callback):
    """Periodic checkpoints, one at the end (with the native HF export), and one on preemption."""

    def on_step_end(self, trainer, out) -> None:
        cfg = trainer.cfg
        if trainer.is_step(cfg.checkpoint_interval) and trainer.state.iter != cfg.max_iters:
            self._save(trainer, export=False)

    def on_preempt(self, trainer) -> None:
        logger.info("stop requested (SIGTERM/SIGINT): checkpointing iteration %d before exiting", trainer.state.iter)
        self._save(trainer, export=False, reason="preempted")

    def on_train_end(self, trainer) -> None:
        if trainer.state.iter == trainer.cfg.max_iters and not trainer.preempted:
            self._save(trainer, export=trainer.cfg.export_hf, reason="final")

    def _save(self, trainer, export: bool, reason: str = "interval") -> None:
        start = time.perf_counter()
        with trainer.untimed():
            cfg = trainer.cfg
            path = checkpoint.save_checkpoint(
                trainer.accelerator, trainer.model, trainer.scheduler, out_dir=cfg.out_dir, state=trainer.state.to_dict(),
                data_loader=trainer.train_loader, schedule=checkpoint.schedule_of(cfg), tokenizer=trainer.tokenizer,
                seq_len=trainer.batch.seq_len, keep=cfg.keep_checkpoints, export_hf=export)
        # bytes: what the next save needs free (keeping K checkpoints needs room for K+1)
        trainer.log({"type": "checkpoint", "iter": trainer.state.iter, "path": str(path),
                     "reason": reason, "time_ms": 1000 * (time.perf_counter() - start),
                     "bytes": checkpoint.layout.directory_bytes(path)})


class HarnessEval(Callback):
    """lm-eval ARC-Easy / ARC-Challenge / OpenBookQA on rank 0 every N iterations. `evaluate` is
    eval.harness.evaluate_model, handed in by training/run.py (the entry point composes the packages:
    training's modules do not import eval/, which imports training's contracts)."""

    def __init__(self, interval: int, data_dir: Optional[str], limit: Optional[int], evaluate: Callable[..., dict]):
        self.interval, self.data_dir, self.limit, self.evaluate = interval, data_dir, limit, evaluate

    def on_step_end(self, trainer, out) -> None:
        if not trainer.is_step(self.interval):
            return
        acc = trainer.accelerator
        start = time.perf_counter()
        with trainer.untimed():
            model = acc.unwrap_model(trainer.model)
            if params_are_sharded(acc):  # ZeRO-3 / FSDP: rank 0 evaluates a gathered full copy
                model = _gathered_copy(acc, trainer.model, model.config)
            if acc.is_main_process:
                was_training = model.training
                model.eval()
                result = self.evaluate(model, trainer.tokenizer, data_dir=self.data_dir, limit=self.limit,
                                        device=str(acc.device))
                model.train(was_training)
                tasks = {t: {k: v for k, v in m.items() if isinstance(v, (int, float))}
                         for t, m in result["results"].items()}
                trainer.log({"type": "eval_harness", "iter": trainer.state.iter, "tasks": tasks,
                             "time_ms": 1000 * (time.perf_counter() - start)})
            acc.wait_for_everyone()


def _gathered_copy(acc, wrapped, config):
    """Collective (every rank calls it): the full weights gathered from the shards; rank 0 gets a plain
    unsharded model built from them (on CPU; evaluate_model moves it), the other ranks None."""
    state = acc.get_state_dict(wrapped)
    return checkpoint.model_from_full_state(config, state) if acc.is_main_process else None


class Profiler(Callback):
    """A torch.profiler trace of iterations [profile_start, profile_start + profile_iters) per rank."""

    def __init__(self, start: int, iters: int, out_dir: str):
        self.start, self.stop, self.out = start, start + iters, Path(out_dir) / "profile"
        self.prof = None

    def on_step_begin(self, trainer) -> None:
        if trainer.state.iter + 1 == self.start and self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
            self.prof.__enter__()

    def on_step_end(self, trainer, out) -> None:
        if self.prof is not None and trainer.state.iter + 1 == self.stop:
            self._finish(trainer)

    def on_train_end(self, trainer) -> None:
        if self.prof is not None:
            self._finish(trainer)

    def _finish(self, trainer) -> None:
        with trainer.untimed():
            self.prof.__exit__(None, None, None)
            self.out.mkdir(parents=True, exist_ok=True)
            rank = trainer.accelerator.process_index
            self.prof.export_chrome_trace(str(self.out / f"trace_rank{rank}.json"))
            sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            (self.out / f"top_ops_rank{rank}.txt").write_text(self.prof.key_averages().table(sort_by=sort, row_limit=40))
            trainer.log({"type": "profile", "iter": trainer.state.iter, "path": str(self.out)})
        self.prof = None
