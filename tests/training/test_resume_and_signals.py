"""Exact resume after SIGKILL, and a checkpoint on SIGTERM (DeepSpeed ZeRO-1, 2 CPU processes)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path


from train_helpers import BIN, REPO, TINY_RUN, failure, read_log, run_training, train_command, train_losses

ITERS = 48


def _args(data, out, *extra):
    # a small sleep-free but slow-enough run: checkpoints every 6 iterations, the last 3 kept
    return [*TINY_RUN, f"--data_dir={data}", f"--out_dir={out}", f"--max_iters={ITERS}", "--global_batch_size=8",
            "--checkpoint_interval=6", "--eval_interval=6", "--eval_iters=2", "--keep_checkpoints=3", *extra]


def _start(config_file, args):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    out = open(Path(args[[a.startswith("--out_dir=") for a in args].index(True)].split("=", 1)[1] + ".out"), "w+")
    proc = subprocess.Popen(train_command(config_file, *args), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.output = out  # a file, not a pipe: a full pipe would stall the run
    return proc


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            proc.output.seek(0)
            raise AssertionError(f"run ended early:\n{proc.output.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_sigkill_then_resume_auto_gives_the_same_curve(demo_data, tmp_path):
    ref = tmp_path / "ref"
    code, log = run_training("cpu.yaml", *_args(demo_data, ref))
    assert code == 0, failure(log)
    reference = train_losses(ref)
    ref_evals = {r["iter"]: r["val_loss"] for r in read_log(ref) if r["type"] == "eval"}

    run = tmp_path / "run"
    proc = _start("cpu.yaml", _args(demo_data, run))
    _wait_for(lambda: (run / "checkpoints" / "iter_000012" / "trainer_state.json").exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up, like a node failure
    proc.wait()
    killed_at = max(train_losses(run))
    assert killed_at < ITERS, "the run finished before the kill; the test proves nothing"

    code, log = run_training("cpu.yaml", *_args(demo_data, run, "--resume=auto"))
    assert code == 0, failure(log)
    assert "resumed from" in log
    resumed = train_losses(run)
    assert sorted(resumed) == list(range(1, ITERS + 1))  # the log was cut back to the checkpoint, then continued
    # same data position, optimizer moments, LR schedule and RNG: identical losses step for step
    assert resumed == reference
    evals = {r["iter"]: r["val_loss"] for r in read_log(run) if r["type"] == "eval"}
    assert evals == ref_evals
    configs = [r for r in read_log(run) if r["type"] == "config"]
    assert len(configs) == 2 and configs[1]["start_iter"] >= 12 and configs[1]["resumed_from"].endswith(
        f"iter_{configs[1]['start_iter']:06d}")
    # The resumed process itself evaluated: its val losses equal the uninterrupted run's only if the val
    # batches do not depend on the loader's history (this passed vacuously while a SIGKILL of the launcher
    # left its workers training to the end as orphans, so the "resume" started at the last iteration).
    assert any(i > configs[1]["start_iter"] for i in evals), configs[1]["start_iter"]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["iter_000036", "iter_000042", "iter_000048"]  # keep_checkpoints=3, no .tmp left behind


def test_sigterm_writes_a_checkpoint_before_exiting(demo_data, tmp_path):
    run = tmp_path / "run"
    proc = _start("cpu.yaml", _args(demo_data, run, "--max_iters=100000", "--checkpoint_interval=0", "--eval_interval=0"))
    log_path = run / "log.jsonl"
    _wait_for(lambda: log_path.exists() and log_path.read_text().count('"train"') >= 3, proc)
    os.kill(proc.pid, signal.SIGTERM)  # to the launcher, as a scheduler's preemption would
    proc.wait(timeout=300)
    proc.output.seek(0)
    out = proc.output.read()
    records = read_log(run)
    ckpts = [r for r in records if r["type"] == "checkpoint"]
    assert ckpts and ckpts[-1]["reason"] == "preempted", out[-3000:]
    last_iter = max(r["iter"] for r in records if r["type"] == "train")
    assert ckpts[-1]["iter"] == last_iter
    state = json.loads((run / "checkpoints" / f"iter_{last_iter:06d}" / "trainer_state.json").read_text())
    assert state["iter"] == last_iter and state["world_size"] == 2


def test_fresh_run_refuses_to_overwrite_checkpoints(demo_data, tmp_path):
    code, log = run_training(None, *_args(demo_data, tmp_path, "--max_iters=6", "--micro_batch_size=8"))
    assert code == 0, failure(log)
    code, log = run_training(None, *_args(demo_data, tmp_path, "--max_iters=6", "--micro_batch_size=8"))
    assert code == 2 and "already holds checkpoints" in log and "--resume=auto" in log
