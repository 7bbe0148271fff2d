"""One variant of the training-step benchmark on the device: its model (ours or native, per attention
backend, compile setting and loss path) inside the trainer's step (benchmarks/trainer_step.py), and what
is done with it besides timing: the largest micro-batch that fits, peak memory on CPU, a profile."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from modeling import DecoderForCausalLM, resolve_attn_implementation, to_hf
from training.batch_plan import BatchPlan
from training.precision import torch_dtype

from .memory import PeakTensorBytes, free_device_memory, is_oom, reset_peak
from .report import slug
from .timing import synchronize
from .trainer_step import StepTrainer, build_step_trainer

LR = 1e-4  # the optimizer's peak learning rate: any positive value, a step costs the same


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
    """A variant's model on the device inside a Trainer; `step(ids)` is one `Trainer.train_step` over the
    batch `ids` (targets: the next tokens, the last position has none)."""

    variant: Variant
    model: torch.nn.Module  # ours or the native model: the weights the optimizer updates
    steps: StepTrainer
    native_class: Optional[str] = None
    ids: Optional[torch.Tensor] = field(default=None, repr=False)  # the batch the steps read
    labels: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def optimizer(self):
        return self.steps.optimizer

    def feed(self, ids: torch.Tensor) -> None:
        """The batch of the next steps; its labels are made here, once, not inside the timed steps."""
        if ids is not self.ids:
            self.ids, self.labels = ids, next_token_labels(ids)
            self.steps.feed(itertools.repeat((ids, self.labels)), BatchPlan(ids.shape[1], ids.shape[0], 1, 1))

    def step(self, ids: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """One optimizer step over `ids` (`eager`: compiled blocks run eagerly, see trainer_step); returns the
        loss (no host sync)."""
        self.feed(ids)
        return self.steps.step(eager=eager).loss


def next_token_labels(ids: torch.Tensor) -> torch.Tensor:
    """shift_labels for `ids`: position t predicts token t+1; the last position has no target (-100),
    exactly what `labels=ids` means to a causal LM."""
    return torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)


def build_runner(src: DecoderForCausalLM, variant: Variant, device: torch.device, dtype: str, precision: str) -> Runner:
    """Copy `src` (CPU, fp32) into the variant's model on `device`, inside a Trainer. Raises ImportError for
    an unavailable attention backend and NotExportableError when the native class cannot hold the config."""
    # ImportError with the reason if unavailable here (flash_attn: also for an fp32 run)
    attn, _ = resolve_attn_implementation(variant.attn, compute_dtype=torch_dtype(dtype))
    ours = copy.deepcopy(src)
    ours.config._attn_implementation = attn  # read at every forward; HF's setter refuses our (direct) backends
    native_class = None
    if variant.impl == "native":
        model = to_hf(ours)  # same weights; eager -> eager, else sdpa
        del ours
        native_class = type(model).__name__
    else:
        model = ours
    pure = precision == "pure"
    model.to(device=device, dtype=torch_dtype(dtype) if pure else torch.float32)
    if variant.impl == "native" and variant.attn == "flash_attention_2":
        model.set_attn_implementation("flash_attention_2")  # after the move: HF checks the device
    model.train()
    loss = "native" if variant.impl == "native" else variant.loss
    placeholder = BatchPlan(1, 1, 1, 1)  # until step() feeds a batch (the micro-batch may still be searched)
    steps = build_step_trainer(model, device=device, precision=dtype, batch=placeholder, batches=(), lr=LR,
                               loss=loss, compile=variant.compile, pure=pure, attn=attn)
    return Runner(variant, model, steps, native_class)


def make_batch(micro_batch: int, seq_len: int, vocab_size: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (micro_batch, seq_len), generator=g).to(device)


def cpu_step_peak_bytes(runner: Runner, ids: torch.Tensor) -> int:
    """Peak live tensor bytes of one step (weights, AdamW state and batch included), see PeakTensorBytes."""
    runner.feed(ids)  # the labels exist before the tracked step, as the batch does
    alive = [*runner.model.parameters(), *runner.model.buffers(), ids, runner.labels]
    alive += [t for state in runner.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    with PeakTensorBytes(alive) as tracker:
        runner.step(ids)
    return tracker.peak


def find_max_micro_batch(runner: Runner, seq_len: int, vocab: int, device: torch.device, seed: int, cap: int) -> int:
    """Largest power-of-two micro-batch whose eager step fits (CUDA; compiled variants' blocks run eagerly
    here, see trainer_step, and the timed steps reuse the size). The first step at 1 allocates the
    optimizer state, so each probe sees weights + grads + AdamW moments + activations. The probes'
    updates are undone afterwards (weights restored; optimizer, loss-scale and LR-schedule state reset),
    so every variant's timed steps start from the same weights whatever its search did."""
    weights = {k: t.detach().to("cpu", copy=True) for k, t in runner.model.state_dict().items()}
    try:
        return _probe_micro_batches(runner, seq_len, vocab, device, seed, cap)
    finally:
        runner.model.load_state_dict(weights)
        runner.steps.reset()  # AdamW's moments and step count start again at the first timed step
        free_device_memory(device)
        reset_peak(device)  # the search's failed probe must not count as this variant's peak


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
            runner.model.zero_grad(set_to_none=True)
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
