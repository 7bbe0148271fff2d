"""Helpers for tests that launch training runs (imported by tests; not a test module)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
BIN = Path(sys.executable).parent
RUN_PY = str(REPO / "training" / "run.py")
# A tiny LLaMA (GQA) on 64-token windows: ~10 ms per micro-batch on one core.
TINY_RUN = ["--preset=tiny-llama", "--seq_len=64", "--micro_batch_size=4", "--lr=3e-3", "--min_lr=3e-4",
            "--warmup_iters=2", "--eval_interval=0", "--log_interval=1", "--checkpoint_interval=0", "--precision=fp32",
            "--export_hf=false"]


def prepare_demo_data(out: Path) -> Path:
    """The shipped Shakespeare sample tokenized with the shipped BPE (train + 5% val)."""
    subprocess.run([sys.executable, "-m", "data_prep.prepare", "--input", str(ASSETS / "corpus"),
                    "--tokenizer", str(ASSETS / "tokenizer"), "--out", str(out), "--seq-len", "64",
                    "--val-fraction", "0.05"], check=True, cwd=REPO, capture_output=True, timeout=300)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(config_file: str | None, *args: str, launcher_args: tuple = ()) -> list[str]:
    """`accelerate launch --config_file accelerate_configs/X training/run.py ARGS`, or plain python for None.

    Each launch gets its own rendezvous port: two runs on the default 29500 would join each other."""
    if config_file is None:
        return [sys.executable, RUN_PY, *args]
    return [str(BIN / "accelerate"), "launch", "--config_file", str(REPO / "accelerate_configs" / config_file),
            "--main_process_port", str(free_port()), *launcher_args, RUN_PY, *args]


def failure(log: str) -> str:
    """The lines that say what went wrong on any rank, then the tail of the output."""
    errors = [line for line in log.splitlines() if "Error" in line or line.startswith("error:")]
    return "\n".join(errors[-20:]) + "\n...\n" + log[-3000:]


def run_training(config_file, *args, timeout=600, env=None, launcher_args=()):
    """Run to completion under a timeout (a gloo process can hang at exit); the process group is killed on timeout."""
    cmd = train_command(config_file, *args, launcher_args=launcher_args)
    # CPU only, even on a GPU machine: the assertions (gloo, sdpa, null MFU) describe the CPU runs
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"training timed out after {timeout}s:\n{out[-5000:]}")
    return proc.returncode, out


def read_log(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines() if line.strip()]


def train_losses(out_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_log(out_dir) if r["type"] == "train"}
