"""Find and load the model a CHECKPOINT argument names, as a native transformers model.

CHECKPOINT may be any of (checked in this order):

  a training run dir      OUT/ with OUT/checkpoints/iter_XXXXXX/ -> its latest complete checkpoint
  a training checkpoint   OUT/checkpoints/iter_000008/ holding model/ (+ trainer_state.json)
                          (the layout and its names: training/checkpoint_layout.py)
  a model directory       config.json + weights: our save_pretrained (model_type "llmstack_decoder")
                          or a native export (gpt2 / llama / qwen3 / any transformers causal LM)
  a Hub model id          ORG/NAME, fetched through the usual Hugging Face cache

Our models are converted with `modeling.to_hf` so lm-eval sees a plain GPT2LMHeadModel /
LlamaForCausalLM / Qwen3ForCausalLM; remote code is never run.
"""

from __future__ import annotations

import json
import pickle
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import checkpoint_layout as layout, run_log  # standard library only: no torch/accelerate import

from .errors import EvalError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class ResolvedCheckpoint:
    """Where the pieces of a CHECKPOINT argument live (all paths absolute; Hub ids kept as given)."""

    spec: str  # the argument as given
    kind: str  # "run" | "training-checkpoint" | "model-dir" | "hub"
    model: str  # directory (or Hub id) to load the model from
    checkpoint_dir: Path | None = None  # the iter_XXXXXX dir, when there is one
    run_dir: Path | None = None  # the training run dir holding log.jsonl, when found
    trainer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A short label for tables: run/iter_000008, the model dir's name, or the Hub id."""
        if self.kind == "hub":
            return self.spec
        if self.checkpoint_dir is not None:
            parent = self.checkpoint_dir.parent
            if parent.name == layout.CHECKPOINTS_DIR:  # OUT/checkpoints/iter_X -> "OUT/iter_X"
                parent = parent.parent
            return f"{parent.name}/{self.checkpoint_dir.name}"
        return Path(self.model).name

    @property
    def local_dir(self) -> Path | None:
        """The directory results are written next to by default (None for a Hub id)."""
        if self.kind == "hub":
            return None
        return self.checkpoint_dir if self.checkpoint_dir is not None else Path(self.model)


def _holds_model(ckpt: Path) -> bool:
    return (ckpt / layout.MODEL_DIR / "config.json").is_file()


def _is_training_checkpoint(path: Path) -> bool:
    """Training's own rule (training/checkpoint_layout.py: iter_N with its manifest), holding a model."""
    return layout.is_complete(path) and _holds_model(path)


def _model_problems(ckpt: Path) -> list[str]:
    """The files evaluation reads (model/, trainer_state.json) checked against the manifest: one more
    read of the weights (~1 s per GiB), so a corrupted file is named instead of evaluated."""
    try:
        manifest = layout.read_manifest(ckpt)
    except layout.CheckpointIntegrityError as e:
        return [str(e)]
    return layout.verify(ckpt, [n for n in manifest if n.startswith(f"{layout.MODEL_DIR}/") or n == layout.TRAINER_STATE])


def _latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest complete iter_XXXXXX under run_dir/checkpoints whose model files are intact (skips
    temporaries, checkpoints still being written and corrupted ones, saying why)."""
    for ckpt in reversed(layout.list_checkpoints(run_dir)):
        if not _holds_model(ckpt):
            continue
        problems = _model_problems(ckpt)
        if not problems:
            return ckpt
        log.warning("run dir %s: skipping %s: %s", run_dir, ckpt.name, "; ".join(problems[:3]))
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}:{e.lineno}: not valid JSON ({e.msg}). Fix or remove the file.") from e
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def resolve_checkpoint(spec: str | Path) -> ResolvedCheckpoint:
    """Classify CHECKPOINT (see module docstring); raise EvalError naming what was expected."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        raise EvalError(
            f"{spec} is a file, not a checkpoint. Pass the directory that holds config.json "
            "(or a training checkpoint iter_XXXXXX/, or the training run dir)."
        )
    if path.is_dir():
        path = path.resolve()
        if (path / layout.CHECKPOINTS_DIR).is_dir() and not (path / "config.json").is_file():
            latest = _latest_checkpoint(path)
            if latest is None:
                raise EvalError(
                    f"{path / layout.CHECKPOINTS_DIR} has no complete checkpoint with intact model files (iter_XXXXXX/ "
                    f"with {layout.MANIFEST} and {layout.MODEL_DIR}/). Wait for the first checkpoint of the run, or pass "
                    "a checkpoint directory."
                )
            log.info("run dir %s: using its latest checkpoint %s", path, latest.name)
            resolved = _from_training_checkpoint(spec, latest, verified=True)
            resolved.kind = "run"
            return resolved
        if _is_training_checkpoint(path):
            return _from_training_checkpoint(spec, path)
        if path.name == layout.MODEL_DIR and _is_training_checkpoint(path.parent):  # iter_XXXXXX/model itself
            return _from_training_checkpoint(spec, path.parent)
        if _holds_model(path) and not (path / "config.json").is_file():
            raise EvalError(f"{path} is not a complete training checkpoint (no {layout.MANIFEST}: its save did not "
                            f"finish). Pass an earlier checkpoint, or its {layout.MODEL_DIR}/ directory to evaluate the "
                            "weights as they are.")
        if (path / "config.json").is_file():
            return ResolvedCheckpoint(spec=spec, kind="model-dir", model=str(path), run_dir=run_log.find_run_dir(path))
        contents = sorted(p.name for p in path.iterdir())[:10]
        raise EvalError(
            f"{path} is not a model: expected config.json (a save_pretrained / exported model), model/ "
            f"(a training checkpoint) or checkpoints/iter_XXXXXX/ (a training run); it holds {contents or 'nothing'}."
        )
    # "runs/demo" when runs/ exists locally is a mistyped path, not the Hub repo "runs/demo".
    looks_local = spec.startswith((".", "~", "/")) or (path.parent != Path(".") and path.parent.is_dir())
    if _HUB_ID.match(spec) and not looks_local:
        return ResolvedCheckpoint(spec=spec, kind="hub", model=spec)
    raise EvalError(f"{spec}: no such directory (and not a Hugging Face Hub model id of the form ORG/NAME).")


def _from_training_checkpoint(spec: str, ckpt: Path, verified: bool = False) -> ResolvedCheckpoint:
    problems = [] if verified else _model_problems(ckpt)
    if problems:
        raise EvalError(f"{ckpt} failed verification: {'; '.join(problems[:3])}. Pass an earlier checkpoint "
                        "(or the run dir: it skips corrupted checkpoints).")
    try:
        state = layout.read_trainer_state(ckpt) if (ckpt / layout.TRAINER_STATE).is_file() else {}
    except layout.CheckpointIntegrityError as e:
        raise EvalError(str(e)) from e
    return ResolvedCheckpoint(
        spec=spec, kind="training-checkpoint", model=str(ckpt / layout.MODEL_DIR), checkpoint_dir=ckpt,
        run_dir=run_log.find_run_dir(ckpt), trainer_state=state,
    )


def find_tokenizer_dir(resolved: ResolvedCheckpoint) -> str:
    """The model dir if it holds tokenizer files, else the checkpoint or run dir that does."""
    if resolved.kind == "hub":
        return resolved.model
    candidates = [Path(resolved.model), resolved.checkpoint_dir, resolved.run_dir]
    for d in candidates:
        if d is not None and any((d / f).is_file() for f in TOKENIZER_FILES):
            return str(d)
    raise EvalError(
        f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {resolved.model}"
        + (f" or {resolved.checkpoint_dir}" if resolved.checkpoint_dir else "")
        + ". Save the tokenizer with the model (tokenizer.save_pretrained) or pass --tokenizer DIR."
    )


def _hub_hint(where: str) -> str:
    if Path(where).expanduser().is_dir():
        return ""
    return (f" ({where} is not a local directory, so it was looked up on the Hugging Face Hub: check the id, "
            "the network and HF_HUB_OFFLINE, or pass a local checkpoint)")


def load_tokenizer(name_or_dir: str) -> Any:
    import modeling  # noqa: F401  AutoTokenizer reads config.json: model_type "llmstack_decoder" must be known
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_dir)
    except (OSError, ValueError) as e:
        raise EvalError(f"could not load a tokenizer from {name_or_dir}{_hub_hint(name_or_dir)}: {str(e).rstrip('.')}. "
                        "Pass --tokenizer DIR.") from e


def load_raw_model(resolved: ResolvedCheckpoint, dtype: Any = None) -> Any:
    """The checkpoint's model on CPU as saved: our DecoderForCausalLM, or a native transformers model.

    `dtype` is a torch dtype, or None for the dtype the weights were saved in.
    """
    import modeling  # noqa: F401  registers model_type "llmstack_decoder" with the Auto classes
    from transformers import AutoConfig, AutoModelForCausalLM

    where = resolved.model
    if resolved.kind != "hub":
        config_path = Path(where) / "config.json"
        if "model_type" not in _read_json(config_path):
            raise EvalError(f"{config_path}: no 'model_type' field; this is not a transformers model config.")
    try:
        config = AutoConfig.from_pretrained(where)  # never trust_remote_code: custom code is refused
    except (OSError, ValueError, KeyError) as e:
        raise EvalError(
            f"cannot read the model config of {where}{_hub_hint(where)}: {str(e).rstrip('.')}. Only our model_type "
            "'llmstack_decoder' and model types built into transformers load (remote code is never run)."
        ) from e
    try:
        return AutoModelForCausalLM.from_pretrained(where, config=config, dtype=dtype or "auto")
    except pickle.UnpicklingError as e:  # transformers loads .bin weights with weights_only=True
        bad = str(e).split("WeightsUnpickler error: ", 1)[-1].split(". ", 1)[0].strip()
        raise EvalError(
            f"refused to load {where}: its pickled (.bin) weights hold more than tensors ({bad}), which could run "
            "code. Use a checkpoint saved as safetensors (every checkpoint this project writes is), or convert "
            "the file yourself only if you trust its source."
        ) from None
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot load the model weights of {where}: {e}") from e


def as_native(model: Any, where: str = "the model") -> Any:
    """Our DecoderForCausalLM converted by `modeling.to_hf` (same logits); native models unchanged."""
    import modeling

    if not isinstance(model, modeling.DecoderForCausalLM):
        return model
    try:
        return modeling.to_hf(model)
    except modeling.NotExportableError as e:
        raise EvalError(f"{where}: {e}; lm-eval and the Hub export need a native transformers class.") from e


def load_model(resolved: ResolvedCheckpoint, dtype: Any = None) -> Any:
    """The checkpoint as a native transformers model (GPT2LMHeadModel, LlamaForCausalLM, ...) on CPU."""
    raw = load_raw_model(resolved, dtype)
    native = as_native(raw, resolved.model)
    del raw  # the converted copy holds its own weights
    return native.eval()


def model_summary(resolved: ResolvedCheckpoint, model: Any) -> dict[str, Any]:
    """What the results JSON records about the evaluated model."""
    state = resolved.trainer_state
    return {
        "name": resolved.name,
        "checkpoint": resolved.spec,
        "kind": resolved.kind,
        "path": resolved.model,
        "run_dir": str(resolved.run_dir) if resolved.run_dir else None,
        "model_type": model.config.model_type,
        "class": type(model).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "iter": state.get("iter"),
        "tokens": state.get("tokens"),
    }
