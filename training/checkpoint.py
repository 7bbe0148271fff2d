"""Checkpoints: save (atomic), find, resume, prune; the HF-format model beside the training state.

Layout of OUT/checkpoints/iter_000123/ (written to iter_000123.tmp/, renamed when complete):
    accelerate/              accelerator.save_state: model, optimizer (ZeRO shards), LR schedule, RNG
    data_state_rank{r}.json  the loader position of rank r (the next sample of the global stream)
    model/                   DecoderForCausalLM.save_pretrained (safetensors) + the tokenizer
    hf/                      (optional) native transformers export: GPT2/Llama/Qwen3ForCausalLM
    trainer_state.json       iteration, tokens trained, world size; written last
A directory without trainer_state.json, or with the .tmp suffix, is incomplete and never resumed.
Multi-node runs need a filesystem shared by all nodes under out_dir (as torchtitan and the HF Trainer).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from data_prep.atomic import atomic_write_json
from training.distributed import params_are_sharded

logger = logging.getLogger(__name__)

_ITER_DIR = re.compile(r"^iter_(\d+)$")


def checkpoint_dir(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"iter_{iteration:06d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _ITER_DIR.match(path.name)
        if m and (path / "trainer_state.json").is_file():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Optional[Path]:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(trainer, export_hf: bool = False) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    acc = trainer.accelerator
    final = checkpoint_dir(trainer.cfg.out_dir, trainer.state.iter)
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # a leftover of an interrupted save
    acc.wait_for_everyone()
    acc.save_state(str(tmp / "accelerate"))
    atomic_write_json(tmp / f"data_state_rank{acc.process_index}.json", trainer.train_loader.state_dict())
    # The full model state is a collective gather under ZeRO-3/FSDP; otherwise every rank already holds
    # it and only rank 0 (which writes model/ and hf/) needs a CPU copy.
    full_state = acc.get_state_dict(trainer.model) if (params_are_sharded(acc) or acc.is_main_process) else None
    acc.wait_for_everyone()  # every rank's files are on disk before rank 0 commits the directory
    if acc.is_main_process:
        model = acc.unwrap_model(trainer.model)
        # save_pretrained pops the tensors out of the dict it is given: hand it a shallow copy
        model.save_pretrained(tmp / "model", state_dict=dict(full_state))
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(tmp / "model")
        if export_hf:
            _export_native(model.config, full_state, trainer.tokenizer, tmp / "hf")
        atomic_write_json(tmp / "trainer_state.json", trainer.state.to_dict() | {"world_size": acc.num_processes})
        missing = [r for r in range(acc.num_processes) if not (tmp / f"data_state_rank{r}.json").exists()]
        if missing:
            raise RuntimeError(f"checkpoint {tmp} lacks the data state of ranks {missing}; not committing it")
        if final.exists():  # the same iteration saved again (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(trainer.cfg.out_dir, trainer.cfg.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def model_from_full_state(config, state_dict):
    """A plain (unwrapped, unsharded) DecoderForCausalLM on CPU holding a gathered full state dict.
    Strict load: a missing tensor is an error, never silent garbage in an export or an evaluation."""
    from modeling import DecoderForCausalLM
    from modeling.hf_export import build_with_weights

    return build_with_weights(lambda: DecoderForCausalLM(config), {k: v.to("cpu") for k, v in state_dict.items()})


def _export_native(config, state_dict, tokenizer, out: Path) -> None:
    """The native transformers export, from the gathered full state (rank 0 only: under ZeRO-3,
    `from_pretrained` would enter DeepSpeed's zero.Init, a collective the other ranks never join)."""
    from modeling import NotExportableError, export_hf

    model = model_from_full_state(config, state_dict)
    try:
        export_hf(model, out, tokenizer=tokenizer)
    except NotExportableError as exc:  # e.g. gpt2-1.36b's decoupled head_dim: keep our format only
        logger.warning("no native export: %s", exc)


def _prune(out_dir: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(resume: Optional[str], out_dir: str | Path) -> Optional[Path]:
    """None/'' -> fresh start; 'auto' -> the newest complete checkpoint (or fresh); else that directory."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file() or not (path / "accelerate").is_dir():
        raise ValueError(f"resume={resume!r} is not a complete checkpoint (needs trainer_state.json and accelerate/)")
    return path


def load_checkpoint(trainer, path: Path) -> None:
    """Collective: restore model, optimizer, LR schedule, RNG (accelerate), then iteration and data position."""
    acc = trainer.accelerator
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("world_size") != acc.num_processes:
        raise ValueError(
            f"{path} was saved with world_size={state.get('world_size')} but this run has {acc.num_processes}; "
            "optimizer shards (ZeRO) and data positions are per rank: resume with the same number of processes"
        )
    acc.load_state(str(path / "accelerate"))
    trainer.state.load_dict(state)
    data_state = json.loads((path / f"data_state_rank{acc.process_index}.json").read_text())
    trainer.train_loader.load_state_dict(data_state)
