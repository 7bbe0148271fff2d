"""Process hygiene for a training worker: die with the launcher, never hang on a stale build lock.

- `exit_with_launcher()`: torchrun's agent (inside `accelerate launch`) is the workers' parent. Killed
  with -9 it cannot forward anything, and the workers trained on to the end as orphans, writing
  checkpoints. Linux's PR_SET_PDEATHSIG has the kernel send the worker SIGTERM when its parent dies;
  the trainer treats that like any SIGTERM (the ranks agree, checkpoint, exit within a step).
- `check_jit_builds()`: DeepSpeed compiles some ops on first use (on CPU `deepspeed_shm_comm` at
  every launch's start, `cpu_adam` with optimizer offload) under a lock file in torch's extension
  cache. A build killed half-way leaves that file, and every later launch on the machine waited on it
  forever, silently. Here a lock older than any real build is reported and removed, and a first build
  is announced with how long it takes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path

logger = logging.getLogger("training")
PR_SET_PDEATHSIG = 1
# A real build of these ops takes 1-2 minutes on 2 cores: a lock this old was left by a killed build.
STALE_BUILD_LOCK_S = 10 * 60


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def exit_with_launcher() -> None:
    """Ask the kernel for SIGTERM when the parent (the launcher's agent) dies. Linux only; a no-op elsewhere."""
    if not sys.platform.startswith("linux") or not launched_by_torchrun():
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:  # the launcher died before we asked: act now
        os.kill(os.getpid(), signal.SIGTERM)


def use_venv_extensions_dir() -> None:
    """Build DeepSpeed's JIT ops inside this environment (`<venv>/torch_extensions`) unless
    TORCH_EXTENSIONS_DIR says otherwise: torch's default cache (~/.cache/torch_extensions) is shared by
    every environment on the machine, and two venvs with different torch builds rebuilt the same op
    in turn at each launch (minutes each, serialised on its lock)."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ and os.access(sys.prefix, os.W_OK):
        os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(sys.prefix) / "torch_extensions")


def extensions_root() -> Path:
    """torch's JIT extension cache: TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions/py3XX_{cpu,cuNNN}."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory("deepspeed_shm_comm", verbose=False)).parent  # (creates that op's dir)


def check_jit_builds(ops: list[str], announce: bool) -> None:
    """On one rank per node (`announce`): remove stale build locks of `ops` (older than STALE_BUILD_LOCK_S)
    with a warning, and announce the ops this launch will compile. The other ranks leave the lock alone:
    one that removed it first would start its build under a new lock, and the announcing rank would then
    see a fresh lock and only wait (a rank waiting on the stale lock proceeds once it is gone)."""
    if not announce:
        return
    try:
        root = extensions_root()
    except Exception:  # noqa: BLE001 - a private torch helper: never let it stop a run
        return
    for op in ops:
        build = root / op
        lock = build / "lock"
        if lock.exists():
            age = time.time() - lock.stat().st_mtime
            if age > STALE_BUILD_LOCK_S:
                logger.warning("removing a stale build lock %s (%.0f min old, left by a killed build of %s); "
                               "the op is rebuilt now", lock, age / 60, op)
                lock.unlink(missing_ok=True)
            else:
                logger.warning("waiting for another process's build of DeepSpeed op %s (lock %s, %.0f s old); if "
                               "no build is running, delete that file", op, lock, age)
        if not any(build.glob(f"{op}*.so")):
            logger.warning("building DeepSpeed op %s (first run on this machine only, about 1-2 minutes) into %s",
                           op, build)


def launch_config_file() -> Path | None:
    """The --config_file that `accelerate launch` (or `python -m training.launch`) was given, read from the
    launcher's command line (the workers' parent): accelerate passes the file's settings on as environment
    variables but not whether it asked for GPUs."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    for i, arg in enumerate(argv):  # accelerate accepts --config-file too
        if arg in ("--config_file", "--config-file") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith(("--config_file=", "--config-file=")):
            return Path(arg.split("=", 1)[1])
    return None


def check_gpus_for_launch_config() -> None:
    """A GPU config (one that names `gpu_ids`) launched on a machine with fewer GPUs than processes used to
    start that many CPU processes and finish 'successfully'. Refuse it, naming both numbers."""
    if not launched_by_torchrun():
        return
    path = launch_config_file()
    if path is None or not path.is_file():
        return
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return  # accelerate itself read it; nothing to say here
    if "gpu_ids" not in config or str(config.get("use_cpu", "false")).lower() == "true":
        return
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    have = torch.cuda.device_count()
    if have < local:
        raise ValueError(
            f"{path} runs {local} processes on one GPU each, this machine has {have} GPU(s); on a machine "
            "without GPUs use accelerate_configs/cpu.yaml (or cpu_ddp.yaml), else set num_processes to the GPU count"
        )
