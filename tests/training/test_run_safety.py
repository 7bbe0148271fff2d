"""Faults injected into real runs: non-finite losses, two runs in one out_dir, a killed launcher, a stale
DeepSpeed build lock, trackers with 2 processes. Each asserts what the run must do instead of the old
silent behaviour (NaN checkpoints, interleaved logs, orphaned workers, hangs, a lost final checkpoint)."""

import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import BIN, REPO, TINY_RUN, failure, read_log, run_training, train_command
from training.config import load_config
from training.nonfinite import NAN_TEST_ENV, LossSpikes


def _weights(ckpt):
    return load_file(str(ckpt / "model" / "model.safetensors"))


def _checkpoints(out_dir):
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir()) if (out_dir / "checkpoints").exists() else []


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("--lr=.inf", "lr=inf is not a finite number"), ("--lr=.nan", "lr=nan is not a finite number"),
    ("--lr=0", "lr must be positive"), ("--lr=-1e-3", "lr must be positive"),
    ("--min_lr=.inf", "min_lr=inf is not a finite number"), ("--micro_batch_size=0", "micro_batch_size must be positive"),
    ("--global_batch_size=-8", "global_batch_size must be positive"), ("--global_batch_tokens=0", "global_batch_tokens must be positive"),
    ("--nonfinite_policy=ignore", "nonfinite_policy='ignore'"), ("--beta2=1.0", "beta2"),
])
def test_bad_optimisation_values_are_refused_at_config_time(override, message):
    from training.config import parse_overrides

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, parse_overrides([override]))


def test_huge_lr_stops_the_run_and_leaves_only_finite_checkpoints(demo_data, tmp_path):
    """Single process, lr=1e3: the loss goes non-finite within a few steps. Before: exit 0 and every
    checkpoint held 27/27 NaN tensors. Now: exit 3, one line naming the iteration, finite checkpoints only."""
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--lr=1e3",
                             "--warmup_iters=0", "--max_iters=40", "--checkpoint_interval=2", "--keep_checkpoints=0",
                             "--log_interval=5")
    assert code == 3, failure(log)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss or gradient norm at iteration" in errors[0], log[-2000:]
    first_bad = int(errors[0].split("at iteration ")[1].split()[0])
    record = [r for r in read_log(tmp_path) if r["type"] == "nonfinite"]
    assert record and record[0]["policy"] == "stop"
    ckpts = _checkpoints(tmp_path)
    assert ckpts and all(int(c.split("_")[1]) < first_bad for c in ckpts), (ckpts, first_bad)
    for c in ckpts:
        assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "checkpoints" / c).values()), c


def test_stop_policy_under_zero1_on_2_processes(demo_data, tmp_path):
    """A NaN loss at iteration 4 (test hook) under DeepSpeed ZeRO-1: the run stops at its next sync point,
    names iteration 4 once (not once per rank), writes no checkpoint after iteration 2."""
    code, log = run_training("cpu.yaml", *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}",
                             "--max_iters=8", "--checkpoint_interval=2", "--keep_checkpoints=0", "--log_interval=4",
                             env={NAN_TEST_ENV: "4"})
    assert code != 0, failure(log)
    assert log.count("error: non-finite loss or gradient norm at iteration 4") == 1, failure(log)
    assert _checkpoints(tmp_path) == ["iter_000002"]


@pytest.mark.parametrize("config_file", [None, "cpu.yaml"], ids=["1proc", "zero1_2proc"])
def test_skip_policy_leaves_weights_and_schedule_untouched(demo_data, tmp_path, config_file):
    """Policy skip, NaN loss at iteration 4: the checkpoints after iterations 3 and 4 hold the same weights
    (the step was not applied), the LR schedule does not advance, the run goes on and counts the skip."""
    code, log = run_training(config_file, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}",
                             "--max_iters=6", "--checkpoint_interval=1", "--keep_checkpoints=0",
                             "--nonfinite_policy=skip", env={NAN_TEST_ENV: "4"})
    assert code == 0, failure(log)
    ck = tmp_path / "checkpoints"
    w3, w4, w5 = (_weights(ck / f"iter_00000{i}") for i in (3, 4, 5))
    assert all(torch.equal(w3[k], w4[k]) for k in w3)
    assert not all(torch.equal(w4[k], w5[k]) for k in w4)  # training went on
    records = read_log(tmp_path)
    train = {r["iter"]: r for r in records if r["type"] == "train"}
    assert [r["iter"] for r in records if r["type"] == "skipped_step"] == [4]
    assert train[5]["lr"] == train[4]["lr"]  # the schedule stood still for the skipped step
    assert train[6]["skipped_steps"] == 1


def test_skip_policy_stops_after_too_many_skips_in_a_row(demo_data, tmp_path):
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--max_iters=10",
                             "--nonfinite_policy=skip", "--nonfinite_max_skips=3", env={NAN_TEST_ENV: "3,4,5,6"})
    assert code == 3 and "3 consecutive steps up to iteration 5" in log, failure(log)


def test_loss_spikes_are_events():
    spikes = LossSpikes(zscore=4.0, window=20)
    base = [3.0 + 0.01 * ((i * 7) % 5) for i in range(20)]
    assert all(spikes.update(x) is None for x in base)
    z = spikes.update(3.5)
    assert z is not None and z > 4.0
    assert LossSpikes(zscore=0.0, window=20).update(100.0) is None  # off by default


# ------------------------------------------------------------------------------------------------
def test_second_run_into_the_same_out_dir_is_refused(demo_data, tmp_path):
    """While one run trains, a second into its out_dir fails at start naming the holder; once the first is
    gone (killed -9: its lock is stale), a new run takes the out_dir over with a message."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    args = [*TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--max_iters=100000"]
    first = subprocess.Popen(train_command(None, *args), cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.5)
        assert (tmp_path / "log.jsonl").exists(), "the first run never started"
        code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--max_iters=2")
        assert code == 2, failure(log)
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "is in use by another run" in errors[0] and f"PID {first.pid}" in errors[0], log
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    # the killed run left no checkpoints: a fresh run may use its out_dir, taking the stale lock over
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--max_iters=2")
    assert code == 0, failure(log)
    assert "taking over from a run that is no longer running" in log and f"PID {first.pid}" in log


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read().split()
    return stat[2] != "Z"


def test_workers_exit_when_the_launcher_is_killed(demo_data, tmp_path):
    """kill -9 of `accelerate launch` alone: before, both workers trained on to the end as orphans. Now the
    kernel sends them SIGTERM (PR_SET_PDEATHSIG): they agree to stop, checkpoint and exit within seconds."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    cmd = train_command("cpu.yaml", *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", "--max_iters=100000")
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # training has started on both ranks
            if (tmp_path / "log.jsonl").exists() and sum(1 for r in read_log(tmp_path) if r["type"] == "train") >= 3:
                break
            time.sleep(0.5)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 60
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(_alive(w) for w in workers), "orphaned workers still running 60 s after the launcher died"
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group is gone: what the test wants
    assert [r["reason"] for r in read_log(tmp_path) if r["type"] == "checkpoint"] == ["preempted"]


def test_stale_deepspeed_build_lock_is_removed_and_a_first_build_announced(tmp_path, monkeypatch, caplog):
    """A build killed half-way leaves `lock` in torch's extension cache; every later DeepSpeed launch then
    waited on it forever, silently. The rank that announces (one per node) removes a lock older than any
    real build and says so; a fresh lock (a build running now) is left alone with a message."""
    import logging

    from training.worker import STALE_BUILD_LOCK_S, check_jit_builds, extensions_root

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_root() == tmp_path
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    check_jit_builds(["deepspeed_shm_comm"], announce=False)  # the other ranks never touch it
    assert lock.exists()
    with caplog.at_level(logging.INFO, logger="training"):
        check_jit_builds(["deepspeed_shm_comm"], announce=True)
    assert lock.exists() and "waiting for another process's build" in caplog.text  # fresh: a build may be running
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training"):
        check_jit_builds(["deepspeed_shm_comm"], announce=True)
    assert not lock.exists() and "removing a stale build lock" in caplog.text
    assert "building DeepSpeed op deepspeed_shm_comm (first run on this machine only" in caplog.text


def test_tensorboard_tracker_with_2_processes_keeps_the_final_checkpoint(demo_data, tmp_path):
    """Before: accelerate's end_training() ran before the final save, destroyed the process group and the
    run ended with exit 1 and no checkpoints/. Now trackers finish last."""
    code, log = run_training("cpu.yaml", *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}",
                             "--max_iters=4", "--trackers=[tensorboard]")
    assert code == 0, failure(log)
    assert _checkpoints(tmp_path) == ["iter_000004"]
    # the console: one format, rank 0 only, no raw records, no per-rank DeepSpeed import warning
    assert "iter 4/4 | loss" in log and "iter 4/4 | checkpoint iter_000004 (final)" in log
    assert "{'type'" not in log and log.count("Setting accelerator to CPU") <= 1  # at most the launcher's own
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    logged = {r["iter"]: r["loss"] for r in read_log(tmp_path) if r["type"] == "train"}
    assert losses.keys() == logged.keys() and all(abs(losses[k] - logged[k]) < 1e-5 for k in losses)
