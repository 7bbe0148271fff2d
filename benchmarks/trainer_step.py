"""The step the benchmarks time is the trainer's: `training.trainer.Trainer.train_step`, built here for one
benchmark configuration, so that what is measured is what is trained.

One step = `batch.grad_accum_steps` micro-batches of data fetch (+ copy to the device) -> forward
(chunked LM-head loss) -> backward, then clip (the recipe's default grad_clip 1.0) -> AdamW step
(`training.optim.build_optimizer`, fused on CUDA) -> zero_grad -> LR schedule step, under accelerate's
mixed precision (autocast; fp16 adds its GradScaler) and gradient accumulation, exactly as
`training.run.build_trainer` sets them up; no callbacks, no non-finite guard (those belong to
`Trainer.iteration`, see benchmarks/trainer_overhead.py for their cost), single process.

The trainer calls `model(input_ids=x, shift_labels=y, return_logits=False)`. Loss paths that training
does not take are kept for the comparisons through `StepModel`: "full" (our model's logits +
cross-entropy, `return_logits=True`) and "native" (a transformers model, `labels=input_ids`, shifted
inside: the same targets as y). Every path hands only the loss back, so logits die inside the forward.

The model is prepared as training prepares it: `training.run.prepare_for_training(model, cfg)` with the
TrainConfig built here (activation checkpointing, then `block.compile()` per decoder block, in place), so
`compile=True` times the per-block compiled step that training runs (accelerate's autocast wrapper goes
around the model, outside every compiled block, as in training). The native model, which training never
runs, gets the same per-block compile of its decoder layers, so that ours/native compare like with like.

Per-block compile is in place, so there is one module. A step that must not compile (the micro-batch
search's probes: each new size would compile the blocks again) runs that module under
`torch.compiler.set_stance("force_eager")`: the same weights, optimizer and code, without the compiled
graphs. That is the simplest correct option: a non-compiled deep copy would put a second set of weights
on the device whose memory the search is measuring, and the eager step is the conservative probe (inductor
fuses intermediates away, so a compiled step holds no more activations in practice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers.modeling_outputs import CausalLMOutput

from modeling import DecoderForCausalLM
from training.batch_plan import BatchPlan
from training.config import TrainConfig
from training.optim import build_optimizer, build_scheduler
from training.precision import get_precision
from training.run import prepare_for_training
from training.trainer import StepOutput, Trainer

LOSS_PATHS = ("chunked", "full", "native")


class StepModel(torch.nn.Module):
    """The model as the trainer calls it, on one loss path (module doc); returns only the loss."""

    def __init__(self, inner: torch.nn.Module, loss: str = "chunked"):
        super().__init__()
        if loss not in LOSS_PATHS:
            raise ValueError(f"unknown loss path {loss!r}; choose one of {', '.join(LOSS_PATHS)}")
        self.inner, self.loss = inner, loss

    def forward(self, input_ids: torch.Tensor, shift_labels: torch.Tensor, return_logits: bool = False, **kwargs):
        if self.loss == "native":
            out = self.inner(input_ids=input_ids, labels=input_ids)
        else:  # "chunked": the trainer's own call, unchanged
            out = self.inner(input_ids=input_ids, shift_labels=shift_labels,
                             return_logits=return_logits or self.loss == "full", **kwargs)
        return CausalLMOutput(loss=out.loss)


def check_precision(device: torch.device, precision: str, pure: bool = False) -> None:
    """accelerate autocasts fp16 on CUDA only: on a CPU an fp16 mixed-precision run computes in fp32."""
    get_precision(precision)  # unknown name: one error naming the choices
    if precision == "fp16" and not pure and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA (accelerate does not autocast fp16 on a CPU, the step "
                         "would run in fp32); use bf16 or fp32 on a CPU")


def fresh_accelerator(device: torch.device, mixed_precision: str, grad_accum_steps: int) -> Accelerator:
    """A single-process Accelerator on `device`. accelerate keeps one process-wide state: a benchmark that
    changes device or precision within a process (tests, the sweep) starts that state afresh."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("the benchmarks time one process: run them with python, not accelerate launch / torchrun")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate's single-process device is the current one
    kwargs: dict[str, Any] = dict(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum_steps,
                                  cpu=device.type == "cpu", step_scheduler_with_optimizer=False)
    try:
        acc = Accelerator(**kwargs)
    except ValueError:  # "AcceleratorState has already been initialized and cannot be changed"
        acc = None
    if acc is None or acc.device.type != device.type or acc.state.mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(**kwargs)
    return acc


@dataclass
class StepTrainer:
    """A Trainer over one model, prepared as training prepares it (module doc)."""

    trainer: Trainer
    model: torch.nn.Module  # the bare model: its weights are the optimizer's parameters

    @property
    def optimizer(self):
        return self.trainer.optimizer

    def feed(self, batches: Iterable, batch: BatchPlan) -> None:
        """The batches the next steps read (what Trainer.start() sets up for the loop: the stop agreement
        and signal handlers it also installs are not the step's) and the plan they follow."""
        self.trainer.train_loader, self.trainer.batch = batches, batch
        self.trainer._batches = iter(batches)

    def step(self, eager: bool = False) -> StepOutput:
        """One Trainer.train_step; eager: with torch.compile's graphs set aside (module doc)."""
        if not eager:
            return self.trainer.train_step()
        with torch.compiler.set_stance("force_eager"):
            return self.trainer.train_step()

    def reset(self) -> None:
        """Forget the optimizer's moments, the loss scale and the LR schedule's position (weights are the
        caller's): the next step starts as a first training step does."""
        self.optimizer.state.clear()
        acc, cfg = self.trainer.accelerator, self.trainer.cfg
        if acc.scaler is not None:  # fp16: a fresh scale, as at the start of training
            acc.scaler = self.optimizer.scaler = torch.amp.GradScaler(acc.device.type)
        self.trainer.scheduler = build_scheduler(self.optimizer, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters)


def prepare_like_training(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Ours: training.run.prepare_for_training. Native: the same per-block compile of its decoder layers
    (model.base_model: .layers for LLaMA / Qwen3, .h for GPT-2); training never checkpoints it."""
    if isinstance(model, DecoderForCausalLM):
        return prepare_for_training(model, cfg)
    if cfg.activation_checkpointing:
        raise ValueError("activation checkpointing is benchmarked on our model only (training never runs the native "
                         "one); leave it off for native variants")
    if cfg.compile:
        base = model.base_model
        for block in base.layers if hasattr(base, "layers") else base.h:
            block.compile()
    return model


def build_step_trainer(model: torch.nn.Module, *, device: torch.device, precision: str, batch: BatchPlan,
                       batches: Iterable, lr: float, loss: str = "chunked", compile: bool = False,
                       activation_checkpointing: bool = False, pure: bool = False,
                       attn: Optional[str] = None) -> StepTrainer:
    """A Trainer as training.run.build_trainer makes one (recipe defaults for everything not given), over
    `model` already on `device` (in its final dtype: fp32 for mixed precision, `precision`'s dtype when
    `pure`), prepared in place as training prepares it (compile, activation_checkpointing: module doc).
    pure: no autocast, the weights and AdamW state are in that dtype."""
    check_precision(device, precision, pure)
    mixed = "no" if pure else get_precision(precision).accelerate
    accelerator = fresh_accelerator(device, mixed, batch.grad_accum_steps)
    cfg = TrainConfig(seq_len=batch.seq_len, micro_batch_size=batch.micro_batch, lr=lr, precision=precision,
                      compile=compile, activation_checkpointing=activation_checkpointing,
                      attn_implementation=attn or "auto", max_iters=10**9)
    prepare_like_training(model, cfg)  # the order of training.run: AC + compile, optimizer, accelerate.prepare
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps,
                                fused=cfg.fused_adamw)
    scheduler = build_scheduler(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters)
    prepared = accelerator.prepare_model(StepModel(model, loss))
    optimizer = accelerator.prepare_optimizer(optimizer)
    trainer = Trainer(cfg=cfg, accelerator=accelerator, model=prepared, optimizer=optimizer, scheduler=scheduler,
                      batch=batch, train_loader=batches, callbacks=[], run_info={})
    step_trainer = StepTrainer(trainer, model)
    step_trainer.feed(batches, batch)
    return step_trainer
