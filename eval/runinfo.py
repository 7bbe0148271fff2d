"""What a training run's files say about a checkpoint: for model cards.

Reads `OUT/log.jsonl` through training/run_log.py (a "config" record, then "train", "eval",
"checkpoint", ... records; docs/formats.md, Run log) and, when the config record names it, the data
manifest (`<data dir>/manifest.json`) for the Hub datasets the corpus came from. A run may still be going or have been killed, so
unreadable lines are skipped with a warning naming file and line rather than failing the export.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from training import run_log  # standard library only: no torch/accelerate import

log = logging.getLogger(__name__)


def read_run_log(run_dir: Path | None) -> run_log.RunLog:
    """The run dir's log as training/run_log.py reads it (an empty RunLog when there is none); lines
    that are not JSON are skipped with a warning naming file and line."""
    if run_dir is None or not run_log.log_path(run_dir).is_file():
        return run_log.RunLog(path=run_log.log_path(run_dir) if run_dir else None)
    run = run_log.read(run_dir)
    for skipped in run.skipped:
        if skipped.kind == "unreadable":
            log.warning("%s:%d: skipping unreadable line (%s)", run.path, skipped.line, skipped.detail)
    return run


def _median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(nums) if nums else None


def _hub_datasets(config: dict[str, Any], run_dir: Path | None) -> list[str]:
    """Hub dataset names from the data manifest's sources (data_prep writes {"kind": "hub", "name"})."""
    data = config.get("data")
    data_dir = data.get("dir") if isinstance(data, dict) else None
    if not data_dir:
        return []
    candidates = [Path(data_dir)] + ([run_dir.parent / data_dir, Path.cwd() / data_dir] if run_dir else [])
    for d in candidates:
        manifest = d / "manifest.json"
        if manifest.is_file():
            try:
                sources = json.loads(manifest.read_text(encoding="utf-8")).get("sources", [])
            except (json.JSONDecodeError, AttributeError):
                log.warning("%s: unreadable manifest; datasets left out of the model card", manifest)
                return []
            sources = sources if isinstance(sources, list) else [sources]
            names = [s.get("name") for s in sources if isinstance(s, dict) and s.get("kind") == "hub"]
            return [str(n).split("[")[0] for n in names if n]
    return []


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def hyperparameters(cfg: dict[str, Any]) -> dict[str, str]:
    """The training hyperparameters a model card lists (as the HF Trainer's card does), from the
    config record (its "recipe" is the full TrainConfig, training/config.py); only those it states."""
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}

    def get(key: str) -> Any:
        return cfg.get(key) if cfg.get(key) is not None else recipe.get(key)

    out: dict[str, str] = {}
    if get("lr") is not None:
        out["learning rate (peak)"] = _g(get("lr"))
    if get("warmup_iters") is not None and get("min_lr") is not None:
        decay_end = get("lr_decay_iters") or get("max_iters")
        out["learning-rate schedule"] = (f"linear warmup over {get('warmup_iters')} steps, then cosine decay to "
                                         f"{_g(get('min_lr'))}" + (f" at step {decay_end}" if decay_end else ""))
    if get("optimizer"):
        betas = (f"betas=({_g(get('beta1'))}, {_g(get('beta2'))})" if get("beta1") is not None and get("beta2") is not None
                 else None)
        eps = f"eps={_g(get('adam_eps'))}" if get("adam_eps") is not None else None
        args = ", ".join(a for a in (betas, eps) if a)
        out["optimizer"] = str(get("optimizer")) + (f" ({args})" if args else "")
    if get("weight_decay") is not None:
        out["weight decay"] = f"{_g(get('weight_decay'))} (weights with 2 or more dimensions)"
    if get("grad_clip") is not None:
        out["gradient clipping (global norm)"] = _g(get("grad_clip")) if get("grad_clip") else "off"
    for label, key in (("micro-batch per device (sequences)", "micro_batch_size"),
                       ("gradient accumulation steps", "grad_accum_steps"), ("devices", "world_size")):
        if get(key) is not None:
            out[label] = str(get(key))
    seqs, seq_len, tpi = get("global_batch_sequences"), get("seq_len"), get("tokens_per_iter")
    if seqs and seq_len:
        out["global batch"] = f"{seqs} sequences x {seq_len} tokens = {tpi or seqs * seq_len:,} tokens"
    for label, key in (("training steps (planned)", "max_iters"), ("precision", "precision"), ("seed", "seed")):
        if get(key) is not None:
            out[label] = str(get(key))
    return out


def training_summary(run_dir: Path | None, trainer_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Figures for the model card; every value may be None when the run's files do not say.

    Speed figures are medians over the train records up to the checkpoint, without the first
    (it includes compilation and warm-up).
    """
    run = read_run_log(run_dir)
    state = trainer_state or {}
    upto = state.get("iter")
    train = [r for r in run.of_type("train") if upto is None or r.get("iter", 0) <= upto]
    steady = train[1:] if len(train) > 1 else train
    cfg = run.config
    last = train[-1] if train else {}
    evals = [r for r in run.of_type("eval") if upto is None or r.get("iter", 0) <= upto]
    tokens = state.get("tokens") if state.get("tokens") is not None else last.get("tokens")
    if tokens is None and upto is not None and cfg.get("tokens_per_iter"):
        tokens = upto * cfg["tokens_per_iter"]
    world = cfg.get("world_size")
    device = cfg.get("device")
    return {
        "log": str(run.path) if run.path and run.path.is_file() else None,
        "iter": upto if upto is not None else last.get("iter"),
        "tokens": tokens,
        "seq_len": cfg.get("seq_len"),
        "tokens_per_iter": cfg.get("tokens_per_iter"),
        "precision": cfg.get("precision"),
        "hardware": f"{world} x {device}" if world and device else device,
        "distributed": cfg.get("distributed_type"),
        "zero_stage": cfg.get("ds_stage"),
        "tokens_per_sec": _median([r.get("tokens_per_sec") for r in steady]),
        "mfu": _median([r.get("mfu") for r in steady]),
        "tflops": _median([r.get("tflops") for r in steady]),
        "mem_peak_gb": max((r["mem_peak_gb"] for r in train if isinstance(r.get("mem_peak_gb"), (int, float))), default=None),
        "train_loss": last.get("loss"),
        "val_loss": evals[-1].get("val_loss") if evals else None,
        "preset": (cfg.get("model") or {}).get("preset") if isinstance(cfg.get("model"), dict) else None,
        "datasets": _hub_datasets(cfg, run_dir),
        "data_dir": cfg["data"].get("dir") if isinstance(cfg.get("data"), dict) else None,
        "hyperparameters": hyperparameters(cfg),
        "versions": cfg.get("versions") if isinstance(cfg.get("versions"), dict) else None,  # if the run logged them
    }
