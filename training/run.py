"""Train a decoder under `accelerate launch`: parse -> build -> Trainer.fit().

    accelerate launch --config_file accelerate_configs/cpu.yaml training/run.py \\
        --recipe training/recipes/demo_cpu.yaml --max_iters=8 --out_dir=runs/x [--resume=auto]

Any recipe key can be overridden as --key=value (types are checked; unknown keys are errors).
The accelerate config alone chooses the strategy (DeepSpeed ZeRO-0/1/2/3, DDP, FSDP, 1 process).
Order of application (as torchtitan): model built on every rank from the same seed -> activation
checkpointing -> torch.compile (per block) -> accelerate.prepare (the parallel wrapper).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script by `accelerate launch training/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):  # before torch: help in well under a second
    from training.config import help_text

    print(help_text(__doc__))
    sys.exit(0)

if __name__ == "__main__":  # a Ctrl-C during start-up (imports, DeepSpeed init) exits quietly, as 128 + signal;
    import signal  # the Trainer installs its checkpoint-and-stop handler once training starts

    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import torch

from training.console import quiet_deepspeed_import, quiet_deepspeed_op_load, setup_console
from training.worker import use_venv_extensions_dir

quiet_deepspeed_import()  # before anything imports deepspeed
use_venv_extensions_dir()

from modeling import (FLOPS_DEFINITION, DecoderConfig, DecoderForCausalLM, count_parameters, flops_per_token,
                      resolve_attn_implementation)
from training import callbacks as cb
from training.checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, schedule_of, select_resume
from training.batch_plan import BatchPlan
from training.config import TrainConfig, config_from_argv, help_text
from training.distributed import (agree_on_resume, build_accelerator, compute_dtype, configure_deepspeed,
                                  optimizer_offloaded, precision_name, strategy_description)
from training.nonfinite import EXIT_CODE as NONFINITE_EXIT, LossSpikes, NonFiniteError
from training.optim import build_optimizer, build_scheduler
from training.run_lock import OutDirLock
from training.worker import check_gpus_for_launch_config, check_jit_builds, exit_with_launcher
from training.trainer import Trainer

logger = logging.getLogger("training")
_RUN_LOCK: list = []  # the out_dir lock of this process (rank 0), released by the kernel at exit



def build_model(cfg: TrainConfig, batch: BatchPlan, vocab_size: int, dtype: torch.dtype = torch.float32
                ) -> DecoderForCausalLM:
    """dtype: what the run computes in (the weights are built in fp32 and cast or autocast later); it
    decides whether attn_implementation=auto may pick flash_attn, which takes fp16/bf16 only."""
    attn, reason = resolve_attn_implementation(cfg.attn_implementation, compute_dtype=dtype)
    if cfg.attn_implementation == "auto":
        logger.info("attention: %s (%s)", attn, reason)
    config = DecoderConfig.from_preset(cfg.preset, vocab_size=vocab_size, attn_implementation=attn, **cfg.model_overrides)
    config.check_seq_len(batch.seq_len)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = DecoderForCausalLM(config)
    if cfg.attn_implementation == "auto":  # the model was handed the resolved name: keep auto's reason
        model.attn_backend_reason = reason
    return prepare_for_training(model, cfg)


def prepare_for_training(model: DecoderForCausalLM, cfg: TrainConfig) -> DecoderForCausalLM:
    """Activation checkpointing, then torch.compile per block, in place (the order torchtitan applies
    them). The step benchmark calls it too, so that what it times is what trains."""
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=cfg.activation_checkpointing_every)
    if cfg.compile:
        for block in model.model.layers:  # per block: short compile, unchanged state-dict keys
            block.compile()
    return model


def build_data(cfg: TrainConfig, batch: BatchPlan, rank: int, cuda: bool):
    """The train loader (shuffled, endless, resumable) and the val loader (a finite pass from its first
    batch at every evaluation; None without a val split or evals). `cuda`: the device is a GPU, which
    decides the num_workers / pin_memory defaults when the recipe leaves them None."""
    import time

    from data_prep import PackedTokenDataset, build_dataloader, load_manifest
    from data_prep.dataset import verify_shards

    if not (Path(cfg.data_dir) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"data_dir={cfg.data_dir!r} has no manifest.json; prepare it first: python -m data_prep.prepare "
            f"--input CORPUS --tokenizer TOKENIZER --out {cfg.data_dir} --seq-len {cfg.seq_len} --val-fraction 0.01"
        )
    manifest = load_manifest(cfg.data_dir)
    world_size = batch.world_size
    if cfg.verify_data:  # each rank hashes every world_size-th shard: the data is read once, not once per rank
        start = time.perf_counter()
        read = verify_shards(cfg.data_dir, rank=rank, world_size=world_size)
        logger.info("verify_data: rank %d re-hashed %.2f GB of shards in %.1f s: all match the manifest",
                    rank, read / 1e9, time.perf_counter() - start)
    # On a GPU, 2 workers per rank read shards (page faults on a cold cache cost milliseconds) while
    # the step runs; on CPU the step is the bottleneck and worker start-up would only slow tests.
    num_workers = cfg.num_workers if cfg.num_workers is not None else (2 if cuda else 0)
    pin_memory = cfg.pin_memory if cfg.pin_memory is not None else cuda
    train = PackedTokenDataset(cfg.data_dir, batch.seq_len, "train", shuffle=True, seed=cfg.seed, rank=rank,
                               world_size=world_size,
                               document_positions=cfg.document_masking)  # + position_ids restarting at each document
    train_loader = build_dataloader(train, batch.micro_batch, num_workers=num_workers, pin_memory=pin_memory)
    val_loader = None
    if "val" in manifest["splits"] and cfg.eval_interval > 0:
        # Finite (one pass, in order): every evaluation restarts at the first batch, and a resume
        # (which restores only the train loader) changes nothing. No workers: they would be started
        # afresh at every evaluation to read a few batches.
        val = PackedTokenDataset(cfg.data_dir, batch.seq_len, "val", shuffle=False, rank=rank, world_size=world_size,
                                 document_positions=cfg.document_masking)  # scored with the training attention
        val_loader = build_dataloader(val, batch.micro_batch, pin_memory=pin_memory)
    return manifest, train_loader, val_loader


def load_tokenizer(data_dir: str):
    path = Path(data_dir) / "tokenizer"
    if not path.is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text(__doc__))
        return 0
    cfg, recipe = config_from_argv(argv)
    exit_with_launcher()  # an orphaned worker (launcher killed with -9) gets SIGTERM: checkpoint and exit
    check_gpus_for_launch_config()
    rank = int(os.environ.get("RANK", "0"))
    setup_console(rank)
    if rank == 0:  # held until this process exits: a second run into out_dir is refused
        _RUN_LOCK.append(OutDirLock(cfg.out_dir).acquire())
    resume_from = resolve_resume(cfg.resume, cfg.out_dir)
    if resume_from is None and latest_checkpoint(cfg.out_dir) is not None:
        raise ValueError(
            f"out_dir={cfg.out_dir!r} already holds checkpoints of an earlier run; pass --resume=auto to continue "
            "it, or choose another out_dir (nothing was overwritten)"
        )
    trainer, resume_from = build_trainer(cfg, recipe, resume_from)
    if resume_from is not None:
        trainer.state.load_dict(load_checkpoint(trainer.accelerator, trainer.model, trainer.scheduler, resume_from,
                                                data_loader=trainer.train_loader, schedule=schedule_of(cfg)))
        trainer.run_info["resumed_from"] = str(resume_from)
        logger.info("resumed from %s at iteration %d", resume_from, trainer.state.iter)
    trainer.fit()
    trainer.accelerator.wait_for_everyone()
    if cfg.trackers:
        trainer.accelerator.end_training()  # last: it destroys the process group the final checkpoint needed
    return 0


def build_trainer(cfg: TrainConfig, recipe: Optional[str] = None, resume_from: Optional[Path] = None
                  ) -> tuple[Trainer, Optional[Path]]:
    """Everything a run needs, in the order the module docstring gives, up to a Trainer ready to fit();
    and the checkpoint to resume from once the ranks have verified and agreed on it. Collective: every
    rank calls it. (benchmarks/trainer_overhead.py times the trainer it returns against a bare loop.)"""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available():
        check_jit_builds(["deepspeed_shm_comm"], announce=os.environ.get("LOCAL_RANK", "0") == "0")
        quiet_deepspeed_op_load()
    # The batch plan, worked out once: the accelerator needs its accumulation, which needs the world
    # size, so it comes from the launcher's environment (WORLD_SIZE) and is checked against the accelerator.
    batch = cfg.batch_plan(int(os.environ.get("WORLD_SIZE", "1")))
    accelerator = build_accelerator(cfg, batch)
    if accelerator.num_processes != batch.world_size:
        raise RuntimeError(f"WORLD_SIZE={batch.world_size} but accelerate sees {accelerator.num_processes} processes")
    logger.info(batch.describe())
    configure_deepspeed(accelerator, cfg, batch)
    # verified against its manifest on every rank (auto falls back to the newest intact one) before anything loads
    resume_from = select_resume(accelerator, cfg, agree_on_resume(accelerator, resume_from))

    manifest, train_loader, val_loader = build_data(cfg, batch, accelerator.process_index,
                                                    cuda=accelerator.device.type == "cuda")
    from data_prep import check_vocab_compat, model_vocab_size

    vocab = cfg.vocab_size or model_vocab_size(manifest)
    check_vocab_compat(manifest, vocab)
    model = build_model(cfg, batch, vocab, compute_dtype(accelerator))
    tokenizer = load_tokenizer(cfg.data_dir)

    if optimizer_offloaded(accelerator):
        check_jit_builds(["cpu_adam"], announce=accelerator.is_local_main_process)
    optimizer = build_optimizer(model.to(accelerator.device), cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                cfg.adam_eps, fused=cfg.fused_adamw, cpu_offload=optimizer_offloaded(accelerator))
    optimizer_name = type(optimizer).__name__  # before prepare() wraps it
    scheduler = build_scheduler(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared (it must step once per optimizer step) nor registered for checkpointing (accelerate would
    # pickle it and load it with weights_only=False): checkpoint.py saves its state as JSON.

    config = accelerator.unwrap_model(model).config
    fpt = flops_per_token(config, batch.seq_len)
    device_name = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else "cpu"
    peak = _peak_flops(device_name, precision_name(accelerator))
    run_info = {
        "recipe": cfg.to_dict(), "recipe_file": recipe,
        "model": {**config.to_diff_dict(), "preset": cfg.preset},
        "n_params": count_parameters(config)["total"], "params": count_parameters(config),
        "flops_per_token": fpt, "flops_definition": FLOPS_DEFINITION,
        **strategy_description(accelerator),
        "precision": precision_name(accelerator), "device": device_name, "peak_flops_per_gpu": peak,
        "attn_implementation": config._attn_implementation,
        "attn_reason": getattr(accelerator.unwrap_model(model), "attn_backend_reason", None),
        "activation_checkpointing_layers": [i for i, block in enumerate(accelerator.unwrap_model(model).model.layers)
                                            if getattr(block, "gradient_checkpointing", False)],
        "batch": batch.to_dict(),
        # the same numbers under the flat names that analysis, eval and older logs read
        "seq_len": batch.seq_len, "micro_batch_size": batch.micro_batch, "grad_accum_steps": batch.grad_accum_steps,
        "global_batch_sequences": batch.global_sequences, "tokens_per_iter": batch.tokens_per_iter,
        "max_iters": cfg.max_iters,
        "data": {"dir": cfg.data_dir, "tokens": {k: v["tokens"] for k, v in manifest["splits"].items()},
                 "tokenizer": manifest["tokenizer"]},
        "model_wrapper": type(model).__name__, "optimizer": optimizer_name,
        "mem_kind": "cuda_allocator" if accelerator.device.type == "cuda" else "process_rss",
    }
    callbacks = [
        cb.JsonlLogger(cfg.out_dir),
        cb.TrainMetrics(fpt, peak, LossSpikes(cfg.loss_spike_zscore, cfg.loss_spike_window)),
        cb.LayerGradNorms(cfg.grad_norm_layers_interval),
        cb.Validation(),
        cb.HarnessEval(cfg.harness_interval, cfg.harness_data_dir, cfg.harness_limit, evaluate=_harness_evaluate),
        cb.Checkpointer(),
    ]
    if cfg.profile:
        callbacks.append(cb.Profiler(cfg.profile_start, cfg.profile_iters, cfg.out_dir))
    trainer = Trainer(cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                      batch=batch, train_loader=train_loader, val_loader=val_loader, tokenizer=tokenizer,
                      callbacks=callbacks, run_info=run_info)
    return trainer, resume_from


def _harness_evaluate(*args, **kwargs) -> dict:
    """eval.harness.evaluate_model, imported at the first harness evaluation (lm-eval is slow to import)."""
    from eval.harness import evaluate_model

    return evaluate_model(*args, **kwargs)


def _peak_flops(device_name: str, precision: str):
    if device_name == "cpu":
        return None
    try:
        from training.hardware import canonical_gpu_name, matmul_dtype, peak_flops

        return peak_flops(canonical_gpu_name(device_name), matmul_dtype(precision))
    except (ImportError, ValueError, KeyError) as exc:
        logger.warning("no peak FLOPs for %r (%s): MFU will be null", device_name, exc)
        return None


def _fail(exc: BaseException, code: int) -> None:
    """One line on stderr, from rank 0 only: these errors are the same on every rank (a config every rank
    read, a verdict the ranks agreed on), and N copies under the launcher's output help nobody."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NonFiniteError as exc:
        _fail(exc, NONFINITE_EXIT)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc, 2)
