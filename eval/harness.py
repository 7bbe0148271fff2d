"""Evaluate a checkpoint on ARC-Easy, ARC-Challenge and OpenBookQA with lm-eval-harness.

    python -m eval.harness runs/demo                                   # latest checkpoint, Hub data
    python -m eval.harness runs/demo/checkpoints/iter_000008 --data-dir tests/assets/eval \\
        --output results.json --device cpu                             # offline, local JSONL files
    python -m eval.harness Qwen/Qwen2.5-1.5B --limit 100 --compare eval/reference/qwen2.5-1.5b.json

Zero-shot, lm-eval's own task definitions (or their local-file twins in eval/tasks/), scored by
lm-eval's acc and acc_norm plus accuracy by the highest mean log-prob per answer token. Writes a results
JSON (see `eval.report` for the schema) and a markdown table beside it, and prints the table.

In Python (e.g. the in-training eval callback):

    from eval import evaluate_model
    out = evaluate_model(model, tokenizer, data_dir="data/eval", limit=200)
    out["results"]["arc_easy"]["acc"]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from data_prep.atomic import atomic_write_json, atomic_write_text
from training.precision import PRECISIONS  # standard library only, like training.checkpoint_layout

from .checkpoint import as_native, find_tokenizer_dir, load_model, load_tokenizer, model_summary, resolve_checkpoint
from .errors import EvalError, run_cli
from .report import SCHEMA, default_output_path, load_results_file, markdown_report
from .scoring import METRIC_DOCS, score_samples, task_results
from .taskspec import DEFAULT_TASKS, load_tasks, parse_task_names

log = logging.getLogger("eval.harness")

# --dtype values: the precision table's names (bf16) and torch's (bfloat16) -> torch's
DTYPES = {alias: p.torch_dtype for p in PRECISIONS.values() for alias in (p.torch_dtype, p.name)}
DEFAULT_BATCH_SIZE = {"cuda": 32, "cpu": 8}  # ARC prompts are short: 32 fits any GPU for a 2B model


# ----------------------------------------------------------------------------------------------
# Device, dtype, batch size
# ----------------------------------------------------------------------------------------------
def resolve_device(device: str | None, model: Any = None) -> Any:
    """torch.device: the explicit one; else the model's own accelerator; else cuda if available, else cpu."""
    import torch

    if device is None:
        if model is not None and next(model.parameters()).device.type != "cpu":
            return next(model.parameters()).device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise EvalError(f"--device {device!r}: {e}. Use cpu, cuda or cuda:N.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {device}: CUDA is not available on this machine. Use --device cpu.")
    return dev


def resolve_dtype(dtype: Any, device: Any) -> Any:
    """torch dtype: explicit, else bf16 on CUDA (fp16 on GPUs without bf16), fp32 on CPU."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"--dtype {dtype!r}: choose auto, {', '.join(sorted(set(DTYPES.values())))}.")
    return getattr(torch, DTYPES[dtype])


def resolve_batch_size(batch_size: int | str | None, device: Any) -> int | str:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE.get(device.type, 8)
    if isinstance(batch_size, str) and not batch_size.isdigit():
        if not batch_size.startswith("auto"):
            raise EvalError(f"--batch-size {batch_size!r}: use a positive integer, auto or auto:N.")
        return batch_size  # lm-eval searches the largest batch that fits
    if int(batch_size) < 1:
        raise EvalError(f"--batch-size {batch_size}: must be at least 1.")
    return int(batch_size)


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def prepared_tasks(tasks: str | Sequence[str] | None, data_dir: str | Path | None) -> Iterator[tuple[list[str], Any, list[Any]]]:
    """(names, TaskManager, [Task]) with local data validated and copied into a scratch dir that
    lives until the evaluation is over (lm-eval reads the Arrow files lazily)."""
    names = parse_task_names(tasks)
    with tempfile.TemporaryDirectory(prefix="llmstack-eval-") as scratch:
        manager, task_objs = load_tasks(names, data_dir, Path(scratch))
        yield names, manager, task_objs


# lm-eval's modules with progress bars (building each task's requests, tokenizing, scoring) and no switch
# the evaluator passes on: their `tqdm` is swapped for a disabled one while we evaluate.
_LM_EVAL_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


@contextlib.contextmanager
def quiet_console(verbose: bool = False) -> Iterator[None]:
    """An evaluation's console: our lines (the checkpoint, each task's question count, the model loaded)
    and the results table. Unless `verbose`, off while it runs: the progress bars of datasets (building
    each task's Arrow files), transformers (loading weights) and lm-eval, and lm-eval's INFO messages.
    Everything is restored afterwards: a training run that evaluates keeps its own settings."""
    if verbose:
        yield
        return
    import importlib

    import datasets
    import tqdm
    from transformers.utils import logging as transformers_logging

    def no_bar(*args, **kwargs):  # lm-eval passes disable=False itself at some calls
        return tqdm.tqdm(*args, **{**kwargs, "disable": True})

    # HF_DATASETS_DISABLE_PROGRESS_BARS=0 in the environment asks for datasets' bars: left alone then
    datasets_off = ("HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ
                    and not datasets.utils.are_progress_bars_disabled())
    transformers_off = transformers_logging.is_progress_bar_enabled()
    lm_eval_logger = logging.getLogger("lm_eval")
    level = lm_eval_logger.level
    patched = {}
    try:
        if datasets_off:
            datasets.disable_progress_bars()
        if transformers_off:
            transformers_logging.disable_progress_bar()
        lm_eval_logger.setLevel(max(logging.WARNING, lm_eval_logger.getEffectiveLevel()))
        for name in _LM_EVAL_TQDM_MODULES:
            module = importlib.import_module(name)
            if getattr(module, "tqdm", None) is tqdm.tqdm:
                patched[module] = module.tqdm
                module.tqdm = no_bar
        yield
    finally:
        for module, original in patched.items():
            module.tqdm = original
        lm_eval_logger.setLevel(level)
        if transformers_off:
            transformers_logging.enable_progress_bar()
        if datasets_off:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _quiet_lm_eval_model_warnings() -> Iterator[None]:
    # HFLM warns that a pre-built model skips its loading options: that is what we intend.
    logger = logging.getLogger("lm_eval.models.huggingface")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_lm_eval(
    native: Any, tokenizer: Any, prepared: tuple[list[str], Any, list[Any]], *, limit: int | None,
    batch_size: int | str, samples: bool = False,
) -> dict[str, Any]:
    """lm-eval on a native transformers model already on its device and dtype; our result dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    names, manager, task_objs = prepared
    start = time.perf_counter()
    with _quiet_lm_eval_model_warnings():
        # A copy: HFLM sets a pad token on the tokenizer it is given; the caller's stays untouched.
        lm = HFLM(pretrained=native, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size,
                  device=str(native.device))
    out = lm_eval.simple_evaluate(
        model=lm, tasks=task_objs, task_manager=manager, limit=limit, log_samples=True,
        # No reseeding of the global RNGs: zero-shot log-likelihoods do not use them, and a training
        # run that calls us keeps its streams (evaluate_model also restores them, see _preserved_rng).
        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
    )
    results, per_question = {}, {}
    for name in names:
        scored = score_samples(lm, out["samples"][name])
        results[name] = task_results(name, out, scored)
        per_question[name] = scored
    evaluation = {
        "results": results,
        "settings": {
            "tasks": names, "num_fewshot": 0, "limit": limit, "batch_size": batch_size,
            "device": str(native.device), "dtype": str(next(native.parameters()).dtype).replace("torch.", ""),
            "lm_eval_version": out.get("lm_eval_version"), "transformers_version": out.get("transformers_version"),
            "task_versions": out.get("versions"),
        },
        "metrics": METRIC_DOCS,
        "runtime_s": round(time.perf_counter() - start, 2),
    }
    if samples:
        evaluation["samples"] = per_question
    return evaluation


@contextlib.contextmanager
def _preserved_rng(device: Any) -> Iterator[None]:
    """Restore Python, NumPy and torch (CPU + this CUDA device) RNG states afterwards.

    A training run calls us mid-way and must keep its random streams (dropout, shuffling):
    lm-eval, datasets and tokenizers draw from the global generators here and there.
    """
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def _native_for_eval(model: Any, device: Any, dtype: Any) -> Iterator[Any]:
    """A native transformers model on (device, dtype) with the same weights as `model`; `model`
    itself is left as it was (weights, device, dtype, train/eval mode)."""
    import torch
    import modeling
    from transformers import PreTrainedModel

    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper -> the module
    if isinstance(model, modeling.DecoderForCausalLM):
        native = as_native(model).to(device=device, dtype=dtype).eval()  # a converted copy
        try:
            yield native
        finally:
            del native
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return
    if not isinstance(model, PreTrainedModel):
        raise EvalError(
            f"evaluate_model needs a DecoderForCausalLM or a transformers PreTrainedModel, got {type(model).__name__}. "
            "Unwrap it first (accelerator.unwrap_model(model))."
        )
    param = next(model.parameters())
    if param.device == device and param.dtype == dtype:
        was_training = model.training
        try:
            yield model.eval()
        finally:
            model.train(was_training)
        return
    native = copy.deepcopy(model).to(device=device, dtype=dtype).eval()  # casting in place would lose bits
    try:
        yield native
    finally:
        del native


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | str | None = None,
    device: str | None = None,
    dtype: str | Any | None = None,
    samples: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Zero-shot ARC-Easy / ARC-Challenge / OpenBookQA scores of a live model.

    model:      a `modeling.DecoderForCausalLM` (evaluated through a `modeling.to_hf` copy, so the
                caller's model, its mode and its RNG streams are untouched) or any transformers
                causal LM. Pass the unwrapped module (`accelerator.unwrap_model(model)`); with
                ZeRO-3 the parameters must be gathered first.
    tokenizer:  the model's tokenizer (copied, never modified).
    tasks:      names or "a,b"; default all of arc_easy, arc_challenge, openbookqa.
    data_dir:   directory with ARC-Easy-test.jsonl, ARC-Challenge-test.jsonl, OpenBookQA-test.jsonl;
                None downloads lm-eval's Hub datasets (needs network).
    limit:      first N questions per task (quick periodic evals); None for all.
    batch_size: int or "auto"; default 32 on CUDA, 8 on CPU.
    device:     default the model's device if it is on an accelerator, else cuda if available, else cpu.
    dtype:      "auto" / None (bf16 on CUDA, fp32 on CPU), "bfloat16", "float16", "float32" or a torch dtype.
    samples:    also return per-question records (log-likelihoods, token counts, picks) under "samples".
    verbose:    keep the progress bars of datasets, transformers and lm-eval, and lm-eval's INFO messages.

    Returns {"results": {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "acc_mean_logprob",
    "acc_mean_logprob_stderr", "n", "n_total"}}, "settings": {...}, "metrics": {...}, "runtime_s": float}.
    Raises EvalError for bad tasks / data files / options (message names the file, line and fix).
    """
    dev = resolve_device(device, model)
    torch_dtype = resolve_dtype(dtype, dev)
    bs = resolve_batch_size(batch_size, dev)
    with quiet_console(verbose), _preserved_rng(dev), prepared_tasks(tasks, data_dir) as prepared:
        with _native_for_eval(model, dev, torch_dtype) as native:
            evaluation = run_lm_eval(native, tokenizer, prepared, limit=limit, batch_size=bs, samples=samples)
    evaluation["settings"]["data"] = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else "hub"
    return evaluation


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.harness",
        description="Zero-shot ARC-Easy / ARC-Challenge / OpenBookQA (lm-eval-harness) on a checkpoint.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="training run dir (latest checkpoint), training checkpoint iter_XXXXXX/, "
                   "model dir (save_pretrained or native HF export), or a Hub model id")
    p.add_argument("--data-dir", help="local JSONL test files (ARC-Easy-test.jsonl, ARC-Challenge-test.jsonl, "
                   "OpenBookQA-test.jsonl) instead of downloading from the Hub; needed offline")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help=f"subset of {', '.join(DEFAULT_TASKS)} (space- or comma-separated; default all)")
    p.add_argument("--output", help="results JSON path (default: eval_results.json in the checkpoint dir; "
                   "the markdown table goes beside it as .md)")
    p.add_argument("--compare", nargs="+", default=[], metavar="FILE.json",
                   help="earlier results files (ours or lm-eval's) shown side by side, e.g. eval/reference/qwen2.5-1.5b.json")
    p.add_argument("--limit", type=int, help="evaluate only the first N questions of each task (quick runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    p.add_argument("--batch-size", help="int or auto (default 32 on CUDA, 8 on CPU)")
    p.add_argument("--tokenizer", help="tokenizer dir or Hub id (default: the one saved with the checkpoint)")
    p.add_argument("--name", help="column label in tables (default: run/iter_XXXXXX, dir name or Hub id)")
    p.add_argument("--samples", action="store_true", help="also write per-question records to FILE.samples.jsonl")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log lm-eval's progress messages too, and show the progress bars of datasets, transformers and lm-eval")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv)


def _main(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit {args.limit}: must be at least 1.")
    resolved = resolve_checkpoint(args.checkpoint)
    compare = [load_results_file(f) for f in args.compare]  # fail on a bad file before any model work
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    batch_size = resolve_batch_size(args.batch_size, device)
    output = Path(args.output) if args.output else default_output_path(resolved.local_dir, resolved.name)
    tokenizer = load_tokenizer(args.tokenizer or find_tokenizer_dir(resolved))
    with quiet_console(args.verbose), prepared_tasks(args.tasks, args.data_dir) as prepared:  # data checked first
        log.info("loading %s (%s) as %s on %s", resolved.model, resolved.kind, dtype, device)
        model = load_model(resolved, dtype=dtype).to(device)
        evaluation = run_lm_eval(model, tokenizer, prepared, limit=args.limit, batch_size=batch_size, samples=args.samples)
    evaluation["settings"]["data"] = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else "hub"
    per_question = evaluation.pop("samples", None)
    payload = {
        "schema": SCHEMA,
        "name": args.name or resolved.name,
        "model": model_summary(resolved, model),
        **evaluation,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    report = markdown_report(payload, compare)
    atomic_write_json(output, payload)
    md_path = atomic_write_text(output.with_suffix(".md"), report)
    if per_question is not None:
        lines = [json.dumps({"task": t, **q}) for t, qs in per_question.items() for q in qs]
        atomic_write_text(output.with_suffix(".samples.jsonl"), "\n".join(lines) + "\n")
    print(report)
    print(f"wrote {output} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
