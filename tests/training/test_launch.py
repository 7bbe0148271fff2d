"""`python -m training.launch`: a Ctrl-C ends with the workers' checkpoint and one launcher line, and resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_helpers import BIN, REPO, RUN_PY, TINY_RUN, failure, free_port, read_log, train_losses

from training.checkpoint_layout import list_checkpoints
from training.launch import _training_out_dir, interrupted_message


def _launch(config_file: str, *args: str, launcher_args: tuple = ()) -> list[str]:
    """The README's command: python -m training.launch --config_file accelerate_configs/X training/run.py ARGS."""
    return [sys.executable, "-m", "training.launch", "--config_file", str(REPO / "accelerate_configs" / config_file),
            "--main_process_port", str(free_port()), *launcher_args, RUN_PY, *args]


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu"}


def test_ctrl_c_ends_with_one_line_and_a_checkpoint_that_resumes(demo_data, tmp_path):
    run = tmp_path / "run"
    args = [*TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={run}", "--global_batch_size=8", "--max_iters=100000",
            "--lr_decay_iters=100000"]  # pinned: the resume below stops sooner on the same LR curve
    one_process = ("--num_processes", "1")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w+") as err:  # a file, not a pipe: a full pipe would stall the run
        # its own process group, as a terminal's foreground job: Ctrl-C reaches the launcher and the worker
        proc = subprocess.Popen(_launch("cpu.yaml", *args, launcher_args=one_process), cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
        log = run / "log.jsonl"
        deadline = time.time() + 300
        while not (log.exists() and '"train"' in log.read_text()):
            assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    stderr = err_path.read_text()
    lines = stderr.strip().splitlines()
    assert code == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "SignalException" not in stderr and "death signal" not in stderr, stderr
    # the worker's own account of the stop, then the launcher's one line and nothing else
    stop = next(i for i, line in enumerate(lines) if "stop requested" in line)
    assert len(lines) - stop <= 4, stderr
    checkpoints = list_checkpoints(run)
    assert checkpoints, stderr
    saved = checkpoints[-1]
    assert lines[-1] == f"interrupted (SIGINT): checkpoint {saved} saved; continue with --resume=auto"
    records = read_log(run)
    stopped_at = max(r["iter"] for r in records if r["type"] == "train")
    assert [r["reason"] for r in records if r["type"] == "checkpoint"] == ["preempted"]
    assert saved.name == f"iter_{stopped_at:06d}"

    # the message's advice works: the same command with --resume=auto continues after the saved iteration
    resume = [a for a in args if not a.startswith("--max_iters")] + [f"--max_iters={stopped_at + 2}", "--resume=auto"]
    done = subprocess.run(_launch("cpu.yaml", *resume, launcher_args=one_process), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, failure(done.stdout + done.stderr)
    assert f"resumed from {saved}" in done.stderr
    assert sorted(train_losses(run)) == list(range(1, stopped_at + 3))


def test_the_message_names_the_checkpoint_of_this_launch(tmp_path):
    def checkpoint(it: int) -> Path:
        path = tmp_path / "checkpoints" / f"iter_{it:06d}"
        path.mkdir(parents=True)
        (path / "manifest.json").write_text("{}")
        return path

    assert "before the first checkpoint" in interrupted_message("SIGINT", tmp_path, time.time())
    old = checkpoint(5)
    after_old = time.time() + 1
    assert interrupted_message("SIGTERM", tmp_path, after_old) == (
        f"interrupted (SIGTERM) before this launch saved a checkpoint; --resume=auto continues from {old}")
    new = checkpoint(7)
    assert interrupted_message("SIGINT", tmp_path, os.stat(new / "manifest.json").st_mtime) == (
        f"interrupted (SIGINT): checkpoint {new} saved; continue with --resume=auto")
    assert "--resume=auto" in interrupted_message("SIGINT", None, time.time())


def test_out_dir_comes_from_the_recipe_then_the_overrides():
    recipe = str(REPO / "training" / "recipes" / "demo_cpu.yaml")
    assert _training_out_dir("training/run.py", ["--recipe", recipe]) == Path("runs/demo")
    assert _training_out_dir("training/run.py", [f"--recipe={recipe}", "--out_dir=x"]) == Path("x")
    assert _training_out_dir("other.py", ["--out_dir=x"]) is None  # another script's arguments mean nothing here
    assert _training_out_dir("training/run.py", ["--no_such_key=1"]) is None
