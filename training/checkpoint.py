"""Checkpoints: save (atomic, with an integrity manifest), find, verify, resume, prune; the HF-format
model beside the training state.

The layout of OUT/checkpoints/iter_000123/ (every name in it, where a checkpoint lives, the
"complete" rule) is training/checkpoint_layout.py, which eval/ shares; this module writes and reads
it through those names. A save writes into iter_000123.tmp/ and renames it once its manifest is
written; a directory without manifest.json, or with the .tmp suffix, is incomplete and never
resumed; a complete one is verified against its manifest on every resume, before anything is unpickled.
Multi-node runs need a filesystem shared by all nodes under out_dir (as torchtitan and the HF Trainer).

Trust: model weights are safetensors, our own state is JSON, and accelerate's RNG state and
DeepSpeed's shards are read with torch.load(weights_only=True) plus an allowlist of DeepSpeed's
plain-data classes (DeepSpeed itself loads with weights_only=False). What remains is torch's
restricted unpickler and the manifest: a checkpoint's training state must still come from a trusted
source (see README, "Resume").

One module (~440 lines): save and load are each other's inverse and must change together; the
names and rules they share with eval/ are in checkpoint_layout.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from data_prep.atomic import atomic_write_json
from training import checkpoint_layout as layout
from training.checkpoint_layout import checkpoint_dir, list_checkpoints  # public here too (run.py, tests)
from training.distributed import is_deepspeed, params_are_sharded

logger = logging.getLogger(__name__)

SCHEDULE_KEYS = ("lr", "min_lr", "warmup_iters", "decay_iters")  # what lr_at(step) depends on (optim.py)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed. A ValueError so that run.py prints it as one
    `error:` line (exit 2) instead of a traceback."""


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def schedule_of(cfg) -> dict:
    """The settings the LR at every step depends on (decay_iters is max_iters when lr_decay_iters is unset)."""
    return {"lr": cfg.lr, "min_lr": cfg.min_lr, "warmup_iters": cfg.warmup_iters, "decay_iters": cfg.decay_iters,
            "max_iters": cfg.max_iters}


# ------------------------------------------------------------------------------------------------ save
def _agree(acc, value) -> list:
    """Every rank's `value`, on every rank (a collective; also the barrier between the save's phases)."""
    if acc.num_processes == 1:
        return [value]
    import torch.distributed as dist

    seen = [None] * acc.num_processes
    dist.all_gather_object(seen, value)
    return seen


def _hash(root: Path, names: list[str]) -> dict[str, dict]:
    return {rel: layout.hash_file(root / rel) for rel in names}


def save_checkpoint(acc, model, scheduler, *, out_dir: str | Path, state: dict, data_loader, schedule: dict,
                    tokenizer=None, seq_len: Optional[int] = None, keep: int = 0, export_hf: bool = False) -> Path:
    """Collective: every rank calls it. Returns the final directory; raises CheckpointError on every
    rank when any rank failed (disk full named as such), leaving the earlier checkpoints untouched.

    The parts: `acc` the accelerator (its save_state writes the prepared model, the optimizer (ZeRO
    shards) and the RNG states), `model` the prepared model, `scheduler` the LR schedule (saved as
    JSON), `state` the trainer state to record (TrainState.to_dict(): iter, tokens, extra; its iter names
    the directory), `data_loader` this rank's train loader (its state_dict() is the data position),
    `schedule` the settings the LR curve depends on (schedule_of(cfg)), `tokenizer` and `seq_len`
    (model_max_length) saved with the model, `keep` the number of checkpoints kept (0: all).

    Hashing cost (the manifest): sha256 reads each file once more, right after it was written, by the
    rank that wrote it (so from its page cache) and in parallel across ranks: 1.2 s per GiB per rank
    measured on one core of the 2-core CI machine when idle, 4.4 s under 5x oversubscription
    (`python -m training.checkpoint_layout --bench`). For a 1.8B-parameter bf16 ZeRO-1 run on 8 GPUs
    every rank hashes its 2.7 GB optimizer shard (12 bytes/param / 8) while rank 0 writes model/; rank 1
    also hashes DeepSpeed's 3.6 GB module file and rank 0 then hashes model/ (3.6 GB): ~6.3 GB on the
    slowest rank, ~7 s at 1.2 s/GiB, on top of a save that writes ~29 GB. Hashing while writing would
    need hooks inside torch.save/safetensors; reading back from the page cache costs no disk I/O."""
    final = checkpoint_dir(out_dir, state["iter"])
    tmp = layout.staging_dir(final)
    previous = latest_checkpoint(out_dir)
    needed = layout.directory_bytes(previous) if previous is not None and previous != final else None
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # a leftover of an interrupted save
        _warn_if_short_of_space(final, needed, previous)
    acc.wait_for_everyone()
    hash_start = None

    # Phase 1, every rank: accelerate/DeepSpeed state and this rank's data position.
    error = None
    try:
        acc.save_state(str(tmp / layout.ACCELERATE_DIR))
        atomic_write_json(tmp / layout.data_state_name(acc.process_index), data_loader.state_dict())
        if acc.is_main_process:
            atomic_write_json(tmp / layout.SCHEDULER_STATE, _scheduler_state(scheduler))
    except Exception as exc:  # every rank must hear of it, or the others wait in the next collective
        error = _describe(exc, acc.process_index)
    _raise_if_any(acc, _agree(acc, error), final, tmp, needed, previous)

    # The full model state is a collective gather under ZeRO-3/FSDP; otherwise every rank already holds
    # it and only rank 0 (which writes model/ and hf/) needs a CPU copy.
    full_state = acc.get_state_dict(model) if (params_are_sharded(acc) or acc.is_main_process) else None
    # Phase 1's files, listed once by rank 0 (the same view for every rank), hashed by their writers;
    # rank 0 is spared the files no rank name claims, as it has model/ and hf/ still to write.
    written = {rel: (tmp / rel).stat().st_size for rel in layout.files_under(tmp)} if acc.is_main_process else None
    written = _agree(acc, written)[0]
    entries, error = {}, None
    try:
        hash_start = time.perf_counter()
        entries = _hash(tmp, layout.share_of(written, acc.process_index, acc.num_processes, spare_rank0=True))
        if acc.is_main_process:  # Phase 2, rank 0: the HF-format model and the trainer state, then their hashes
            from modeling.hf_export import finish_export

            plain = acc.unwrap_model(model)
            # save_pretrained pops the tensors out of the dict it is given: hand it a shallow copy
            plain.save_pretrained(tmp / layout.MODEL_DIR, state_dict=dict(full_state))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / layout.MODEL_DIR)
                # eos/bos/pad ids into config + generation_config, model_max_length = seq_len
                finish_export(tmp / layout.MODEL_DIR, tokenizer, max_length=seq_len)
            if export_hf:
                _export_native(plain.config, full_state, tokenizer, tmp / layout.HF_DIR, seq_len)
            atomic_write_json(tmp / layout.TRAINER_STATE, state | {
                "world_size": acc.num_processes, "schedule": schedule})
            entries |= _hash(tmp, [rel for rel in layout.files_under(tmp) if rel not in written])
    except Exception as exc:
        error = _describe(exc, acc.process_index)
    del full_state
    gathered = _agree(acc, (entries, error))
    _raise_if_any(acc, [e for _, e in gathered], final, tmp, needed, previous)

    # Commit, rank 0: the manifest last, then the rename; every rank hears how it went.
    error = None
    if acc.is_main_process:
        try:
            manifest = {rel: entry for part, _ in gathered for rel, entry in part.items()}
            unhashed = sorted(set(layout.files_under(tmp)) - set(manifest))
            if unhashed:  # a file no rank hashed would fail verification on resume: refuse it now
                raise RuntimeError(f"{tmp} holds files no rank hashed: {unhashed[:5]}")
            layout.write_manifest(tmp, manifest)
            hash_s = time.perf_counter() - hash_start
            logger.info("checkpoint %s: %.2f GB, hashed in %.1f s (rank 0's share)", final.name,
                        sum(e["size"] for e in manifest.values()) / 1e9, hash_s)
            if final.exists():  # the same iteration saved again (e.g. SIGTERM right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _prune(out_dir, keep)
        except Exception as exc:
            error = _describe(exc, 0)
    _raise_if_any(acc, _agree(acc, error), final, tmp, needed, previous)
    return final


def _scheduler_state(scheduler) -> dict:
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)  # closures over the config: rebuilt from it, never stored
    return state


def _describe(exc: BaseException, rank: int) -> dict:
    return {"rank": rank, "type": type(exc).__name__, "message": str(exc).strip().splitlines()[0][:500] if str(exc).strip() else "",
            "disk_full": _is_disk_full(exc)}


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC reaches us as OSError (Python writes), RuntimeError (torch.save: "file write failed") or
    SafetensorError ("No space left on device (os error 28)"): look at the chain and the text."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _raise_if_any(acc, errors: list, final: Path, tmp: Path, needed: Optional[int], previous: Optional[Path]) -> None:
    errors = [e for e in errors if e is not None]
    if not errors:
        return
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # every rank has stopped writing (we are past a collective)
    free = _free_bytes(final.parent)
    # torch.save's C++ writer reports ENOSPC only as "file write failed": a full disk is also what
    # explains a failed write when less is free than the previous checkpoint took.
    disk_full = any(e["disk_full"] for e in errors) or (needed is not None and free is not None and free < needed)
    first = errors[0]
    what = f"rank {first['rank']}: {first['type']}: {first['message']}"
    if disk_full:
        size = (f"it needs about {_gb(needed)} (the size of {previous.name})" if needed is not None
                else "the size of one checkpoint is not known yet (this was the first)")
        raise CheckpointError(
            f"disk full while writing checkpoint {final.name} to {final.parent}: {size}, {_gb(free)} free "
            f"({what}). Free space or lower --keep_checkpoints: keeping K checkpoints needs room for K+1, since "
            "the new one is complete before the oldest is pruned. Earlier checkpoints are intact; the partial "
            f"{tmp.name} was removed")
    raise CheckpointError(f"saving checkpoint {final.name} failed ({what}); earlier checkpoints are intact")


def _free_bytes(path: Path) -> Optional[int]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _gb(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _warn_if_short_of_space(final: Path, needed: Optional[int], previous: Optional[Path]) -> None:
    free = _free_bytes(final.parent)
    if needed is not None and free is not None and free < needed:
        logger.warning("checkpoint %s may not fit: %s free, %s took %s", final.name, _gb(free), previous.name, _gb(needed))


def model_from_full_state(config, state_dict):
    """A plain (unwrapped, unsharded) DecoderForCausalLM on CPU holding a gathered full state dict.
    Strict load: a missing tensor is an error, never silent garbage in an export or an evaluation."""
    from modeling import DecoderForCausalLM
    from modeling.hf_export import build_with_weights

    return build_with_weights(lambda: DecoderForCausalLM(config), {k: v.to("cpu") for k, v in state_dict.items()})


def _export_native(config, state_dict, tokenizer, out: Path, max_length: Optional[int] = None) -> None:
    """The native transformers export, from the gathered full state (rank 0 only: under ZeRO-3,
    `from_pretrained` would enter DeepSpeed's zero.Init, a collective the other ranks never join)."""
    from modeling import NotExportableError, export_hf

    model = model_from_full_state(config, state_dict)
    try:
        export_hf(model, out, tokenizer=tokenizer, max_length=max_length)
    except NotExportableError as exc:  # e.g. gpt2-1.36b's decoupled head_dim: keep our format only
        logger.warning("no native export: %s", exc)


def _prune(out_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ resume
def resolve_resume(resume: Optional[str], out_dir: str | Path) -> Optional[Path]:
    """None/'' -> fresh start; 'auto' -> the newest complete checkpoint (or fresh); else that directory,
    which must be complete. Cheap (a listing): select_resume verifies before anything loads."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not layout.is_complete(path):
        why = ("its name is not iter_N" if layout.checkpoint_iteration(path) is None
               else f"it has no {layout.MANIFEST} (the save did not finish, or it predates integrity manifests)")
        raise CheckpointError(f"resume={resume!r} is not a complete checkpoint: {why}; pass an "
                              "out_dir/checkpoints/iter_XXXXXX directory or --resume=auto")
    return path


def verify_checkpoint(acc, path: Path) -> list[str]:
    """Collective: the files of `path` checked against its manifest, split by size across the ranks
    (each hashes ~1/world of the bytes); every rank returns the same list of problems ([] = intact)."""
    try:
        manifest = layout.read_manifest(path)
        share = layout.share_of({rel: e["size"] for rel, e in manifest.items()}, acc.process_index,
                                acc.num_processes, owned=False)
        problems = layout.check_files(path, manifest, share)
        if acc.is_main_process:
            problems += layout.unlisted(path, manifest)
    except layout.CheckpointIntegrityError as exc:
        problems = [str(exc)]
    merged: list[str] = []
    for part in _agree(acc, problems):
        merged += [p for p in part if p not in merged]
    return merged


def select_resume(acc, cfg, resume_from: Optional[Path]) -> Optional[Path]:
    """Collective, after the ranks agreed on resume_from and before anything loads: the checkpoint to
    resume, verified. --resume=auto falls back to the newest intact checkpoint, naming what it skipped
    and why; an explicit path that fails verification is refused. Then the LR schedule is checked."""
    if resume_from is None:
        return None
    explicit = cfg.resume != "auto"
    if explicit:
        candidates = [resume_from]
    else:  # rank 0's list for every rank: the same order of verdicts everywhere
        newest = layout.checkpoint_iteration(resume_from)
        candidates = _agree(acc, [p for p in reversed(list_checkpoints(cfg.out_dir))
                                  if layout.checkpoint_iteration(p) <= newest])[0]
    skipped = []
    for path in candidates:
        start = time.perf_counter()
        problems = verify_checkpoint(acc, path)
        if not problems:
            logger.info("checkpoint %s verified against its manifest in %.1f s", path.name, time.perf_counter() - start)
            break
        if explicit:
            raise CheckpointError(f"resume={str(path)!r} failed verification: {'; '.join(problems[:3])}. "
                                  "Resume another checkpoint (--resume=auto picks the newest intact one)")
        logger.warning("--resume=auto: skipping %s: %s", path.name, "; ".join(problems[:3]))
        skipped.append(f"{path.name} ({problems[0]})")
    else:
        raise CheckpointError(f"--resume=auto: no intact checkpoint in {cfg.out_dir}: {'; '.join(skipped)}. "
                              "Restore one from a copy, or start a fresh run in another out_dir")
    if skipped:
        logger.warning("--resume=auto: resuming %s instead of the newer %s", path.name, ", ".join(skipped))
    _check_schedule(cfg, path)
    return path


def _check_schedule(cfg, path: Path) -> None:
    """Refuse (unless allow_schedule_change) a resume whose LR schedule differs from the one the
    checkpoint was trained on: the cosine would silently change shape mid-run."""
    saved = layout.read_trainer_state(path).get("schedule")
    if saved is None:
        raise CheckpointError(f"{path / layout.TRAINER_STATE} records no LR schedule; resume a checkpoint saved "
                              "by this version, or start a fresh run")
    now = schedule_of(cfg)
    changed = {k: (saved.get(k), now[k]) for k in SCHEDULE_KEYS if saved.get(k) != now[k]}
    if saved.get("max_iters") != now["max_iters"] and not changed:
        logger.info("max_iters %s -> %s: the LR schedule is unchanged (lr_decay_iters=%s)",
                    saved.get("max_iters"), now["max_iters"], cfg.lr_decay_iters)
    if not changed:
        return
    diff = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    if "decay_iters" in changed and cfg.lr_decay_iters is None:
        diff += " (lr_decay_iters is unset, so it follows max_iters)"
    if not cfg.allow_schedule_change:
        keep = (f"; to train longer on the old curve set --lr_decay_iters={saved['decay_iters']}"
                if "decay_iters" in changed and len(changed) == 1 else "")
        raise CheckpointError(
            f"resuming {path.name} with a different LR schedule: {diff}. Pass --allow_schedule_change=true to "
            f"continue on the new schedule from iteration {layout.checkpoint_iteration(path)}, or resume with "
            f"the old values{keep}")
    logger.warning("LR schedule changed on resume (allow_schedule_change): %s; the new schedule applies from "
                   "iteration %d", diff, layout.checkpoint_iteration(path))


def load_checkpoint(acc, model, scheduler, path: Path, *, data_loader, schedule: dict) -> dict:
    """Collective: restore the model, optimizer and RNG (through `acc`, as save_checkpoint saved them),
    the LR `scheduler` and this rank's `data_loader` position; returns the trainer state saved with
    them (iter, tokens, extra: TrainState.load_dict takes it). `schedule` is this run's schedule_of(cfg):
    where allow_schedule_change let it differ from the saved one, it applies from this step on.
    Call select_resume first: it verifies the files this reads."""
    state = layout.read_trainer_state(path)
    if state.get("world_size") != acc.num_processes:
        raise CheckpointError(
            f"{path} was saved with world_size={state.get('world_size')} but this run has {acc.num_processes}; "
            "optimizer shards (ZeRO) and data positions are per rank: resume with the same number of processes"
        )
    if is_deepspeed(acc):
        _load_deepspeed_weights_only(model)
    acc.load_state(str(path / layout.ACCELERATE_DIR))
    _load_scheduler(scheduler, json.loads((path / layout.SCHEDULER_STATE).read_text()), state.get("schedule", {}),
                    schedule)
    data_state = json.loads((path / layout.data_state_name(acc.process_index)).read_text())
    data_loader.load_state_dict(data_state)
    return state


def _load_scheduler(sched, saved: dict, saved_schedule: dict, schedule: dict) -> None:
    sched.load_state_dict(saved | {"lr_lambdas": [None] * len(sched.lr_lambdas)})
    if saved_schedule and any(saved_schedule.get(k) != v for k, v in schedule.items() if k in SCHEDULE_KEYS):
        # allow_schedule_change: the new peak and shape from this step on (the optimizer's restored lr is the old one's)
        sched.base_lrs = [schedule["lr"]] * len(sched.base_lrs)
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs


# DeepSpeed's own loader is torch.load(weights_only=False): any pickle in a shard runs. Its shards need
# only tensors, containers and these plain-data classes (ZeRO-1/2/3 and bf16/fp16 optimizer states).
_DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
)


def _load_deepspeed_weights_only(engine) -> None:
    """Swap the engine's TorchCheckpointEngine for one that loads with weights_only=True (other engines,
    e.g. the decoupled/Nebula ones, are left as configured)."""
    import importlib
    import pickle

    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is not TorchCheckpointEngine:
        return
    allowed = [getattr(importlib.import_module(m), n) for m, n in _DEEPSPEED_SAFE_GLOBALS]

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            try:
                with torch.serialization.safe_globals(allowed):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as exc:
                raise CheckpointError(
                    f"{path}: refused by the weights_only loader ({str(exc).splitlines()[0][:300]}). If it names a "
                    "DeepSpeed plain-data class, add it to _DEEPSPEED_SAFE_GLOBALS in training/checkpoint.py") from exc

    safe = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
    safe.__dict__.update(current.__dict__)  # same configuration, no second initialisation (it logs)
    engine.checkpoint_engine = safe
