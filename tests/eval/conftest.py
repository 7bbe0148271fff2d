"""Fixtures for the eval tests: a tiny training run on disk and one harness run over it.

The run dir mimics what training/ writes (log.jsonl; checkpoints/iter_XXXXXX/{model/, trainer_state.json})
with an untrained tiny LLaMA and the shipped test tokenizer, through training's own names and writer
(training/checkpoint_layout.py, training/run_log.py RunLogWriter), so a change of the layout or of the
log format reaches these fixtures. The harness CLI runs once per session (a subprocess, as a user
would run it) and several test files read its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import checkpoint_layout as layout
from training.run_log import RunLogWriter, log_path

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
EVAL_DATA = ASSETS / "eval"
TOKENIZER_DIR = ASSETS / "tokenizer"
TOKENS_PER_ITER = 4096


def _run_module(module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: int = 180) -> subprocess.CompletedProcess:
    """`python -m module args` from the repo root, offline, with its own HF cache."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_cli():
    """`run_cli("eval.harness", *args, env=..., cwd=...)` -> CompletedProcess (text stdout/stderr)."""
    return _run_module


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _save_checkpoint(run_dir: Path, iteration: int, model, tokenizer) -> Path:
    ckpt = layout.checkpoint_dir(run_dir, iteration)
    model.save_pretrained(ckpt / layout.MODEL_DIR)
    tokenizer.save_pretrained(ckpt / layout.MODEL_DIR)
    (ckpt / layout.TRAINER_STATE).write_text(json.dumps({"iter": iteration, "tokens": iteration * TOKENS_PER_ITER}))
    # sealed as training seals a checkpoint (training/checkpoint_layout.py): the manifest, written last
    layout.write_manifest(ckpt, {rel: layout.hash_file(ckpt / rel) for rel in layout.files_under(ckpt)})
    return ckpt


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer) -> Path:
    """OUT/ with log.jsonl and checkpoints iter_000004, iter_000008 (+ an unfinished iter_000012.tmp)."""
    import torch
    from modeling import DecoderConfig, DecoderForCausalLM

    run = tmp_path_factory.mktemp("run") / "tiny-run"
    torch.manual_seed(0)
    config = DecoderConfig.from_preset("tiny-llama", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.bos_token_id)
    _save_checkpoint(run, 4, DecoderForCausalLM(config), tokenizer)
    _save_checkpoint(run, 8, DecoderForCausalLM(config), tokenizer)
    (layout.staging_dir(layout.checkpoint_dir(run, 12)) / layout.MODEL_DIR).mkdir(parents=True)  # a save cut short
    records = [{"type": "config", "model": {**config.to_diff_dict(), "preset": "tiny-llama"}, "n_params": 360768,
                "world_size": 2, "device": "NVIDIA H100 80GB HBM3", "precision": "bf16", "seq_len": 128,
                "tokens_per_iter": TOKENS_PER_ITER, "distributed_type": "DEEPSPEED", "ds_stage": 1,
                # as training/run.py writes them: the recipe (TrainConfig) and the derived batch figures
                "recipe": {"lr": 3e-4, "min_lr": 3e-5, "warmup_iters": 2, "lr_decay_iters": None, "max_iters": 10,
                           "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "adam_eps": 1e-8, "grad_clip": 1.0,
                           "micro_batch_size": 8, "seq_len": 128, "seed": 1337},
                "optimizer": "AdamW", "micro_batch_size": 8, "grad_accum_steps": 2, "global_batch_sequences": 32,
                "max_iters": 10}]
    for i in range(1, 11):
        records.append({"type": "train", "iter": i, "loss": 7.0 - 0.1 * i, "lr": 1e-3, "tokens_per_sec": 1000.0 * i,
                        "mfu": 0.40 + 0.01 * i, "tflops": 300.0, "time_ms": 50.0, "mem_peak_gb": 2.5,
                        "tokens": i * TOKENS_PER_ITER})
        if i % 4 == 0:
            records += [{"type": "eval", "iter": i, "val_loss": 6.5 - 0.1 * i},
                        {"type": "checkpoint", "iter": i, "path": str(layout.checkpoint_dir(run, i))}]
    writer = RunLogWriter(log_path(run))
    writer.begin(start_iter=0)
    for record in records:
        writer.write(record)
    return run


@pytest.fixture(scope="session")
def checkpoint(tiny_run) -> Path:
    return layout.checkpoint_dir(tiny_run, 8)


@pytest.fixture(scope="session")
def harness_run(checkpoint, tmp_path_factory) -> dict:
    """One CLI run on the fixtures (the command the training stage and the docs promise)."""
    import time

    out = tmp_path_factory.mktemp("harness") / "F.json"
    start = time.perf_counter()
    proc = _run_module(
        "eval.harness", str(checkpoint), "--data-dir", str(EVAL_DATA), "--output", str(out), "--device", "cpu",
        "--samples", "--compare", str(REPO / "eval" / "reference" / "qwen2.5-1.5b.json"),
        env={"HF_HOME": str(out.parent / "hf_home")},
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, f"harness failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return {"json": out, "payload": json.loads(out.read_text()), "proc": proc, "wall_s": wall}
