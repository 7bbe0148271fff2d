"""The Accelerator, built from the accelerate config that `accelerate launch` passed in, and the
checks that keep the DeepSpeed JSON consistent with the recipe.

The distributed strategy (DeepSpeed ZeRO 0-3, DDP, FSDP, one process) is chosen only by the
accelerate config file (and the DS JSON it names); nothing here branches on hardware names.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from .batch_plan import BatchPlan
from .config import TrainConfig
from .precision import PRECISIONS, from_accelerate, get_precision, torch_dtype


def build_accelerator(cfg: TrainConfig, batch: BatchPlan) -> Accelerator:
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    cpu_multi = launched and not torch.cuda.is_available()
    kwargs_handlers = []
    # The collective timeout must outlast what rank 0 does alone while the others wait at a barrier
    # (harness evals, the native export at a checkpoint); NCCL's default is 10 minutes.
    timeout = timedelta(minutes=cfg.dist_timeout_minutes)
    if cpu_multi:
        # Without CUDA the default backend resolution leaves DeepSpeed counting one process (its
        # batch-size check then fails); gloo is the CPU collective backend.
        kwargs_handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timeout))
    elif launched:
        kwargs_handlers.append(InitProcessGroupKwargs(timeout=timeout))
    mixed_precision = None if cfg.precision == "auto" else get_precision(cfg.precision).accelerate
    accelerator = Accelerator(
        gradient_accumulation_steps=batch.grad_accum_steps,
        mixed_precision=mixed_precision,
        log_with=cfg.trackers or None,
        project_dir=cfg.out_dir,
        kwargs_handlers=kwargs_handlers,
        step_scheduler_with_optimizer=False,  # we step the LR schedule ourselves, once per optimizer step
        # A MULTI_GPU config on a CPU machine runs DDP over gloo only with cpu=True (the launcher does
        # not pass `use_cpu` on); never for DeepSpeed, which cpu=True would silently turn into DDP.
        cpu=cpu_multi and not deepspeed,
    )
    # Refuse the silent failure modes instead of training the wrong thing.
    if launched and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(
            f"launched {os.environ['WORLD_SIZE']} processes but accelerate set up no distributed strategy: each "
            "would train alone. Check the accelerate config (distributed_type) and the devices"
        )
    if fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise RuntimeError(
            f"the accelerate config asks for FSDP but accelerate set up {accelerator.distributed_type.value}: "
            "FSDP needs CUDA devices here; use accelerate_configs/cpu.yaml (DeepSpeed) or cpu_ddp.yaml on a CPU"
        )
    return accelerator


def precision_name(accelerator: Accelerator) -> str:
    return from_accelerate(accelerator.mixed_precision)


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(accelerator: Accelerator, cfg: TrainConfig, batch: BatchPlan) -> None:
    """Fill the DS JSON's batch and clipping fields from the recipe; refuse numbers that disagree.

    accelerate fills "auto" itself, but a number in the JSON silently wins over accelerate's
    accumulation, and "gradient_clipping": "auto" becomes 1.0 whatever the recipe says."""
    if not is_deepspeed(accelerator):
        return
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "the DeepSpeed config")
    expected = {
        "train_micro_batch_size_per_gpu": batch.micro_batch,
        "gradient_accumulation_steps": batch.grad_accum_steps,
        "train_batch_size": batch.global_sequences,
        "gradient_clipping": float(cfg.grad_clip),
    }
    for key, value in expected.items():
        current = ds.get(key, "auto")
        if current != "auto" and float(current) != float(value):
            raise ValueError(
                f"{source} sets {key}={current} but the recipe gives {value} "
                f"(micro_batch_size={batch.micro_batch}, accumulation={batch.grad_accum_steps}, "
                f"world_size={batch.world_size}, grad_clip={cfg.grad_clip}); set {key} to \"auto\" "
                "in the JSON: the recipe is the single source of truth"
            )
        ds[key] = value
    plugin.gradient_clipping = float(cfg.grad_clip)
    for half in (name for name, p in PRECISIONS.items() if p.mixed):  # the DS JSON's "bf16"/"fp16" sections
        enabled = ds.get(half, {}).get("enabled", "auto")
        wanted = precision_name(accelerator) == half
        if enabled != "auto" and bool(enabled) != wanted:
            raise ValueError(
                f"{source} sets {half}.enabled={enabled} but training runs in {precision_name(accelerator)} "
                "(from the recipe's precision or the accelerate config's mixed_precision); set it to \"auto\""
            )
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(
            f"{source} defines an optimizer/scheduler; remove them: AdamW and the warmup-cosine schedule "
            "come from the recipe (training/optim.py)"
        )


def _zero_config(accelerator: Accelerator) -> dict | None:
    """The DeepSpeed config's zero_optimization section; None when DeepSpeed does not run."""
    if not is_deepspeed(accelerator):
        return None
    return accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})


def zero_stage(accelerator: Accelerator) -> int | None:
    zero = _zero_config(accelerator)
    return None if zero is None else int(zero.get("stage", 0))


def optimizer_offloaded(accelerator: Accelerator) -> bool:
    """The DeepSpeed config puts the optimizer states (and step) on the CPU (ds_configs/*_offload.json)."""
    zero = _zero_config(accelerator) or {}
    return str(zero.get("offload_optimizer", {}).get("device", "none")).lower() == "cpu"


def params_are_sharded(accelerator: Accelerator) -> bool:
    """True when no rank holds the whole model (ZeRO-3, FSDP): gathering it is a collective, and
    anything that needs the full module (the native export, the harness) must gather first."""
    return zero_stage(accelerator) == 3 or accelerator.distributed_type == DistributedType.FSDP


def compute_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype matmuls and attention run in: bf16/fp16 under mixed precision or DeepSpeed's half modes."""
    return torch_dtype(precision_name(accelerator))


def agree_on_resume(accelerator: Accelerator, resume_from):
    """Every rank resolved --resume on its own view of out_dir; they must name the same checkpoint
    (a stale or node-local out_dir would otherwise resume ranks from different iterations)."""
    if accelerator.num_processes == 1:
        return resume_from
    seen = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(seen, None if resume_from is None else str(resume_from))
    if len(set(seen)) > 1:
        raise ValueError(
            f"ranks disagree on the checkpoint to resume from: {dict(enumerate(seen))}; out_dir must be one "
            "filesystem shared by every node (or pass --resume=PATH visible to all ranks)"
        )
    return resume_from


def strategy_description(accelerator: Accelerator) -> dict:
    return {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "world_size": accelerator.num_processes,
        "num_machines": int(os.environ.get("ACCELERATE_NUM_MACHINES", os.environ.get("GROUP_WORLD_SIZE", 1)) or 1),
        "ds_stage": zero_stage(accelerator),
        "ds_config_file": os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if is_deepspeed(accelerator) else None,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }
