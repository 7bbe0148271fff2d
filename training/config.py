"""TrainConfig: one typed, documented recipe; YAML files plus `--key=value` overrides.

Every field has a type, a default and a one-line doc. Derived values (accumulation steps, the padded
vocabulary, decay horizon) are computed from the fields at start-up, never configured twice, and
every inconsistency is an error that names the field and the fix, before step 1.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import runpy
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .batch_plan import BatchPlan
from .precision import PRECISION_NAMES

RECIPE_PRECISIONS = ("auto", *PRECISION_NAMES)  # auto: what the accelerate config says
# accelerate's `log_with` names (accelerate.utils.LoggerType, minus "all"); availability is checked at start
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "swanlab", "aim")
NONFINITE_POLICIES = ("stop", "skip")  # training/nonfinite.py holds the behaviour (no torch import here)


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------------
    preset: str = "tiny-llama"  # modeling preset name (python -m modeling.describe NAME)
    model_overrides: dict = field(default_factory=dict)  # DecoderConfig field overrides, e.g. {num_hidden_layers: 4}
    attn_implementation: str = "auto"  # attention kernel; auto: FlashAttention-2 on CUDA with bf16/fp16 if installed, else SDPA
    vocab_size: Optional[int] = None  # not set: the data manifest's tokenizer length padded up to a multiple of 128
    # --- data --------------------------------------------------------------------------------------
    data_dir: str = "data/demo"  # output of `python -m data_prep.prepare` (token shards + manifest.json)
    seq_len: int = 256  # tokens per training sequence
    num_workers: Optional[int] = None  # DataLoader workers per rank; not set: 2 on CUDA (shard reads overlap the step), 0 on CPU
    pin_memory: Optional[bool] = None  # page-locked batches (async host-to-device copies); not set: on CUDA only
    verify_data: bool = False  # re-hash every data shard against the manifest's sha256 at start (reads all the data once)
    document_masking: bool = False  # packed rows attend within their own documents only: position_ids restart at each document start (loader document_positions)
    # --- batch -------------------------------------------------------------------------------------
    micro_batch_size: int = 8  # sequences per rank per forward/backward
    global_batch_size: Optional[int] = None  # sequences per optimizer step over all ranks
    global_batch_tokens: Optional[int] = None  # or the same in tokens (must be a multiple of seq_len)
    # --- optimisation --------------------------------------------------------------------------------
    max_iters: int = 1000  # optimizer steps to run
    lr: float = 6e-4  # peak learning rate (after warmup)
    min_lr: float = 6e-5  # final learning rate of the cosine decay
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: Optional[int] = None  # end of the cosine decay; not set: max_iters
    weight_decay: float = 0.1  # AdamW decay, applied to >= 2-D weights only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    adam_eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # global-norm clipping; 0 disables (written into the DeepSpeed config)
    fused_adamw: Optional[bool] = None  # not set: fused kernel when on CUDA
    # --- precision and speed -----------------------------------------------------------------------
    precision: str = "auto"  # auto (the accelerate config's mixed_precision) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute block activations in backward (memory for ~30% time)
    activation_checkpointing_every: int = 1  # with it on: recompute only blocks 0, N, 2N, ... (1: all; larger N
    #                                          trades memory back for speed: `python -m training.planning batch` picks N)
    # --- evaluation ----------------------------------------------------------------------------------
    eval_interval: int = 200  # validation loss every N iterations (0: never; always at the end if > 0)
    eval_iters: int = 20  # validation micro-batches per evaluation (per rank)
    harness_interval: int = 0  # lm-eval ARC/OBQA every N iterations on rank 0 (0: never)
    harness_data_dir: Optional[str] = None  # local ARC/OBQA JSONL dir for harness evals (not set: the Hub tasks)
    harness_limit: Optional[int] = None  # questions per task for in-training harness evals
    # --- logging, checkpoints, profiling -----------------------------------------------------------
    out_dir: str = "runs/demo"  # log.jsonl and checkpoints/ go here
    log_interval: int = 10  # a train record every N iterations (host syncs happen only then)
    grad_norm_layers_interval: int = 0  # per-layer gradient norms every N iterations (0: never)
    checkpoint_interval: int = 500  # a checkpoint every N iterations (and at the end, and on SIGTERM)
    keep_checkpoints: int = 3  # newest checkpoints kept (0: keep all)
    export_hf: bool = True  # also write a native transformers export with the final checkpoint
    resume: Optional[str] = None  # not set: a fresh run | auto: continue from the newest checkpoint in out_dir, if any | a checkpoint dir
    allow_schedule_change: bool = False  # resume even if lr/min_lr/warmup_iters/decay_iters (max_iters) changed: the new schedule applies from there
    seed: int = 1337  # model init and data order
    dist_timeout_minutes: int = 30  # collective timeout: must outlast rank-0-only work (harness evals, exports)
    trackers: list = field(default_factory=list)  # experiment trackers through accelerate, e.g. tensorboard or tensorboard,wandb
    run_name: Optional[str] = None  # tracker run name (default: the out_dir's name)
    profile: bool = False  # torch.profiler trace of a window of iterations into out_dir/profile
    profile_start: int = 5  # first profiled iteration
    profile_iters: int = 3  # profiled iterations
    # --- non-finite losses and gradients (training/nonfinite.py) -------------------------------------
    nonfinite_policy: str = "stop"  # stop: the first non-finite loss/grad norm ends the run (exit 3) | skip: skip such steps
    nonfinite_max_skips: int = 10  # policy skip: this many skipped steps in a row end the run
    loss_spike_zscore: float = 0.0  # log a loss_spike event when a logged loss is this many std devs above the window mean (0: off)
    loss_spike_window: int = 50  # logged losses in the spike detector's window

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks that need no runtime information (world size, manifest): raise naming the field."""
        positive = ("seq_len", "micro_batch_size", "max_iters", "log_interval", "eval_iters", "profile_iters",
                    "activation_checkpointing_every", "dist_timeout_minutes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.precision not in RECIPE_PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {RECIPE_PRECISIONS}")
        for name in ("global_batch_size", "global_batch_tokens"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.global_batch_size is not None and self.global_batch_tokens is not None:
            raise ValueError("set global_batch_size (sequences) or global_batch_tokens, not both")
        # Whatever divides at world_size N divides at 1: a batch that fails here fails on every cluster.
        self.batch_plan(world_size=1)
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "adam_eps", "grad_clip", "loss_spike_zscore"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} is not a finite number")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.adam_eps <= 0 or self.grad_clip < 0:
            raise ValueError("need 0 <= beta1, beta2 < 1, adam_eps > 0 and grad_clip >= 0 (0 disables clipping)")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ValueError(f"trackers: unknown {unknown}; choose from {', '.join(TRACKERS)} (comma-separated)")
        if self.nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite_policy={self.nonfinite_policy!r}: choose one of {NONFINITE_POLICIES}")
        if self.nonfinite_max_skips <= 0 or self.loss_spike_window < 2 or self.loss_spike_zscore < 0:
            raise ValueError("need nonfinite_max_skips >= 1, loss_spike_window >= 2 and loss_spike_zscore >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr} must lie in [0, lr={self.lr}]")
        if self.warmup_iters < 0 or (self.lr_decay_iters is not None and self.lr_decay_iters < self.warmup_iters):
            raise ValueError("warmup_iters must be >= 0 and lr_decay_iters >= warmup_iters")
        if self.resume not in (None, "", "auto") and not Path(self.resume).is_dir():
            raise ValueError(f"resume={self.resume!r} is not a checkpoint directory (use 'auto' or a path to iter_XXXXXX)")

    def batch_plan(self, world_size: int) -> BatchPlan:
        """Micro-batch x accumulation x world_size = the global batch, checked exactly: the one place a
        run's batch arithmetic happens (training/batch_plan.py)."""
        return BatchPlan.from_global(self.seq_len, self.micro_batch_size, world_size,
                                     global_sequences=self.global_batch_size, global_tokens=self.global_batch_tokens)

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.max_iters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# Loading: YAML recipe, then --key=value overrides, with type checks against the dataclass
# ----------------------------------------------------------------------------------------------------
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _unknown_key(key: str, where: str) -> ValueError:
    close = difflib.get_close_matches(key, _FIELDS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(_FIELDS)}"
    return ValueError(f"unknown recipe key {key!r} in {where}{hint}")


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check `value` against the field's annotated type; ints are accepted where floats are expected."""
    hint = _HINTS[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in allowed:
        value = None  # `--resume=None` as --help shows the default
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{key} in {where} must not be null")
    if list in allowed and isinstance(value, str):  # --trackers=tensorboard,wandb
        return [v.strip() for v in value.split(",") if v.strip()]
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict, list) and isinstance(value, origin):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ValueError(f"{key}={value!r} in {where} has type {type(value).__name__}; expected {names}")


def config_from_argv(argv: list[str]) -> tuple[TrainConfig, Optional[str]]:
    """training/run.py's command line (`--recipe FILE` or `--recipe=FILE`, then --key=value overrides) ->
    the validated recipe and the recipe file. The launcher reads out_dir through it too."""
    args, recipe = list(argv), None
    if "--recipe" in args:
        i = args.index("--recipe")
        recipe, args = args[i + 1], args[:i] + args[i + 2:]
    else:
        recipe = next((a.split("=", 1)[1] for a in args if a.startswith("--recipe=")), None)
        args = [a for a in args if not a.startswith("--recipe=")]
    return load_config(recipe, parse_overrides(args)), recipe


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key=value` (or `--key value`) -> {key: YAML-parsed value}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --key=value")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, raw = arg[2:], argv[i + 1]
            i += 1
        else:  # a bare flag means true
            key, raw = arg[2:], "true"
        out[key.replace("-", "_")] = yaml.safe_load(raw) if raw != "" else None
        i += 1
    return out


def load_config(recipe: Optional[str], overrides: dict[str, Any] | None = None) -> TrainConfig:
    values: dict[str, Any] = {}
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {recipe!r} not found; recipes live in training/recipes/*.yaml")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"recipe {recipe} is not valid YAML{where}: {problem}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"recipe {recipe} must be a mapping of key: value")
        for key, value in loaded.items():
            if key not in _FIELDS:
                raise _unknown_key(key, str(path))
            values[key] = _coerce(key, value, str(path))
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise _unknown_key(key, "the command line")
        values[key] = _coerce(key, value, "the command line")
    config = TrainConfig(**values)
    config.validate()
    return config


# ----------------------------------------------------------------------------------------------------
# --help: generated from the dataclass (types, defaults, choices) and the comment on each field
# ----------------------------------------------------------------------------------------------------
# The attention names live in modeling/names.py, a standard-library file loaded by path: importing it
# through the `modeling` package would import torch, which --help must not wait for.
_MODELING_NAMES = runpy.run_path(str(Path(__file__).resolve().parents[1] / "modeling" / "names.py"))
CHOICES = {"precision": RECIPE_PRECISIONS, "nonfinite_policy": NONFINITE_POLICIES, "trackers": TRACKERS,
           "attn_implementation": _MODELING_NAMES["ATTN_IMPLEMENTATIONS"]}


def _field_docs() -> tuple[dict[str, str], dict[str, str]]:
    """The one-line description of each field and the section it sits in, read from this file's comments
    (the comments are the documentation; this keeps them the only copy)."""
    import re

    docs, sections, section, last = {}, {}, "", None
    for line in Path(__file__).read_text().split("class TrainConfig", 1)[1].split("def validate", 1)[0].splitlines():
        if m := re.match(r"\s{4}# --- (.+?) -+$", line):
            section = m.group(1)
        elif m := re.match(r"\s{4}(\w+): [^#]*#\s*(.*)$", line):
            last = m.group(1)
            docs[last], sections[last] = m.group(2).strip(), section
        elif (m := re.match(r"\s+#\s{2,}(.*)$", line)) and last:  # a continued comment
            docs[last] += " " + m.group(1).strip()
    return docs, sections


def _type_name(name: str) -> str:
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return getattr(args[0], "__name__", str(args[0]))


def help_text(header: str) -> str:
    docs, sections = _field_docs()
    defaults = TrainConfig().to_dict()
    lines, section = [header.rstrip(), "", "Recipe keys (YAML `key: value` in --recipe FILE, or --key=value):"], None
    for name in _FIELDS:
        if sections.get(name) != section:
            section = sections.get(name)
            lines.append(f"\n  {section}:")
        default = defaults[name]
        shown = "not set" if default is None else (",".join(default) or "none") if isinstance(default, list) else default
        choices = f" {{{','.join(CHOICES[name])}}}" if name in CHOICES else ""
        lines.append(f"    --{name}={_type_name(name).upper()}{choices}  (default: {shown})")
        lines.append(f"        {docs.get(name, '')}")
    return "\n".join(lines)
