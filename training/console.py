"""What a person reads while a run trains: one line per event, from rank 0, in one format.

    iter 120/300 | loss 4.4123 | lr 2.41e-03 | gnorm 0.412 | 15,212 tok/s | 84 ms/it | mem 0.51 GB | 1.97M tok | 0:01:42 < 0:02:33
    iter 150/300 | val loss 4.3522 (ppl 77.7) | 1.1 s
    iter 150/300 | checkpoint iter_000150 (interval) | 0.3 s

The run log (log.jsonl) keeps every field; the console shows what a person follows a run by:
progress, loss, speed, memory, tokens seen, elapsed < remaining. Third-party noise that says
nothing actionable is silenced at its source here (`setup_console`), once per process.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional

logger = logging.getLogger("training")


def setup_console(rank: int) -> None:
    """Logging for a worker: INFO on rank 0, errors only elsewhere (the ranks would repeat each other)."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # accelerate logs every file of every checkpoint at INFO; our checkpoint line says it once.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if rank != 0:
        warnings.simplefilter("ignore")  # rank 0 shows the same warnings once
    # torch's own deprecation of a collective that DeepSpeed and accelerate call internally: not ours to fix.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    try:  # "Writing model shards" progress bars for a file written in a blink, at every checkpoint
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def quiet_deepspeed_import() -> None:
    """DeepSpeed warns "Setting accelerator to CPU. If you have GPU ..." on import when it finds no GPU;
    naming the accelerator it would pick anyway keeps that line out of every CPU run."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def quiet_deepspeed_op_load() -> None:
    """DeepSpeed prints "DeepSpeed deepspeed_shm_comm_op built successfully" on stdout on every rank of
    every CPU launch when it loads its shared-memory collective op (deepspeed.comm.torch.build_shm_op),
    built or not; the first-run build itself is announced by training.worker.check_jit_builds."""
    import contextlib
    import importlib
    import io

    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")  # the module (deepspeed.comm.torch is torch)

    build = getattr(ds_comm_torch, "build_shm_op", None)
    if build is None or getattr(build, "_quiet", False):  # another DeepSpeed, or already wrapped
        return

    def quiet_build():
        with contextlib.redirect_stdout(io.StringIO()):
            return build()

    quiet_build._quiet = True
    ds_comm_torch.build_shm_op = quiet_build


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _tokens(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit} tok"
    return f"{n:.0f} tok"


def format_record(r: dict[str, Any], max_iters: int, elapsed_s: Optional[float] = None,
                  eta_s: Optional[float] = None) -> Optional[str]:
    """The console line of a run-log record (None: not shown)."""
    kind = r.get("type")
    head = f"iter {r.get('iter')}/{max_iters}"
    if kind == "train":
        parts = [head, f"loss {r['loss']:.4f}", f"lr {r['lr']:.2e}"]
        if r.get("grad_norm") is not None:
            parts.append(f"gnorm {r['grad_norm']:.3f}")
        parts.append(f"{r['tokens_per_sec']:,.0f} tok/s")
        if r.get("mfu") is not None:
            parts.append(f"mfu {100 * r['mfu']:.1f}%")
        parts.append(f"{r['time_ms']:.0f} ms/it")
        if r.get("mem_peak_gb") is not None:
            parts.append(f"mem {r['mem_peak_gb']:.2f} GB")
        if r.get("skipped_steps"):
            parts.append(f"skipped {r['skipped_steps']}")
        parts.append(_tokens(r.get("tokens", 0)))
        if elapsed_s is not None:
            parts.append(f"{_duration(elapsed_s)} < {_duration(eta_s) if eta_s is not None else '?'}")
        return " | ".join(parts)
    if kind == "eval":
        return f"{head} | val loss {r['val_loss']:.4f} (ppl {r['val_ppl']:.1f}) | {r['time_ms'] / 1000:.1f} s"
    if kind == "checkpoint":
        return f"{head} | checkpoint {os.path.basename(str(r['path']))} ({r['reason']}) | {r['time_ms'] / 1000:.1f} s"
    if kind == "eval_harness":
        scores = ", ".join(f"{task} {m.get('acc_norm', m.get('acc', float('nan'))):.3f}"
                           for task, m in (r.get("tasks") or {}).items())
        return f"{head} | lm-eval acc_norm: {scores} | {r['time_ms'] / 1000:.1f} s"
    if kind == "skipped_step":
        return f"{head} | step skipped: non-finite loss or gradient norm ({r['skipped_steps']} so far)"
    if kind == "loss_spike":
        return f"{head} | loss spike: {r['loss']:.4f} is {r['zscore']:.1f} std devs above the recent mean"
    if kind == "nonfinite":
        return None  # run.py prints the error line itself
    if kind == "grad_norms":
        top = sorted(r["layers"].items(), key=lambda kv: -kv[1])[:3]
        return f"{head} | largest per-layer grad norms: " + ", ".join(f"{k} {v:.3f}" for k, v in top)
    if kind == "profile":
        return f"{head} | profiler trace written to {r.get('path', r.get('dir', ''))}"
    return None
