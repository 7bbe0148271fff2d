"""Checkpoints you can trust: every fault injected, the behaviour asserted.

Single-process runs (plain python, no DeepSpeed) share one reference run with checkpoints at 2 and 4;
each test damages a copy. The one distributed test (2 CPU processes, DeepSpeed ZeRO-1) covers what
only a multi-rank run has: per-rank files, verification split across ranks, DeepSpeed's shards read
with weights_only=True."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import BIN, REPO, RUN_PY, TINY_RUN, failure, read_log, run_training, train_losses
from training import checkpoint_layout as layout
from training.optim import lr_at

ITERS = 4


def _args(data, out, *extra):
    return [*TINY_RUN, f"--data_dir={data}", f"--out_dir={out}", f"--max_iters={ITERS}", "--global_batch_size=4",
            "--checkpoint_interval=2", *extra]


def _flip(path: Path, offset: int = -100) -> None:
    """Flip one byte in place, size unchanged (what bit rot or a bad copy does)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(demo_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    code, log = run_training(None, *_args(demo_data, run))
    assert code == 0, failure(log)
    return run


@pytest.fixture
def run_copy(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def test_every_checkpoint_has_a_manifest_of_all_its_files(reference):
    for ckpt in (reference / "checkpoints" / "iter_000002", reference / "checkpoints" / "iter_000004"):
        manifest = layout.read_manifest(ckpt)
        assert sorted(manifest) == layout.files_under(ckpt)  # every file, nothing else
        assert {"accelerate/optimizer.bin", "accelerate/random_states_0.pkl", "model/model.safetensors",
                "scheduler_state.json", "trainer_state.json", "data_state_rank0.json"} <= set(manifest)
        assert not any(n.endswith("custom_checkpoint_0.pkl") for n in manifest)  # the scheduler is JSON now
        assert layout.verify(ckpt) == []
    assert not list((reference / "checkpoints").glob("*.tmp"))
    saves = [r for r in read_log(reference) if r["type"] == "checkpoint"]
    assert [r["iter"] for r in saves] == [2, 4] and all(r["bytes"] > 1_000_000 for r in saves)


def test_auto_resume_skips_a_corrupted_model_file_and_continues_exactly(demo_data, run_copy, reference):
    _flip(run_copy / "checkpoints" / "iter_000004" / "model" / "model.safetensors")
    code, log = run_training(None, *_args(demo_data, run_copy, "--resume=auto"))
    assert code == 0, failure(log)
    assert "skipping iter_000004" in log and "model/model.safetensors does not match its sha256" in log
    assert "resumed from" in log and "iter_000002" in log
    assert train_losses(run_copy) == train_losses(reference)  # iterations 3-4 retrained identically
    assert layout.verify(run_copy / "checkpoints" / "iter_000004") == []  # the bad one was replaced


def test_explicit_resume_of_a_corrupted_checkpoint_is_refused_naming_the_file(demo_data, run_copy):
    ckpt = run_copy / "checkpoints" / "iter_000002"
    _flip(ckpt / "accelerate" / "optimizer.bin", offset=2000)
    code, log = run_training(None, *_args(demo_data, run_copy, f"--resume={ckpt}"))
    assert code == 2, failure(log)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed verification" in errors[0] and "accelerate/optimizer.bin" in errors[0]
    assert "Traceback" not in log


def test_truncated_rng_state_and_planted_pickle_are_named(run_copy):
    ckpt = run_copy / "checkpoints" / "iter_000004"
    rng = ckpt / "accelerate" / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:-10])  # accelerate itself would swallow this ("Could not load random states")
    (ckpt / "accelerate" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"payload": 1}))
    problems = layout.verify(ckpt)
    assert any("random_states_0.pkl has" in p and "truncated" in p for p in problems)
    assert any("custom_checkpoint_0.pkl is not in the manifest" in p for p in problems)


def test_incomplete_and_unmanifested_checkpoints_are_not_resumable(run_copy):
    from training.checkpoint import CheckpointError, list_checkpoints, resolve_resume

    ckpt = run_copy / "checkpoints" / "iter_000004"
    (ckpt / "manifest.json").unlink()  # as a save killed just before its commit, or an old checkpoint
    assert list_checkpoints(run_copy) == [run_copy / "checkpoints" / "iter_000002"]
    assert resolve_resume("auto", run_copy) == run_copy / "checkpoints" / "iter_000002"
    with pytest.raises(CheckpointError, match="no manifest.json"):
        resolve_resume(str(ckpt), run_copy)


def test_changed_schedule_is_refused_then_allowed(demo_data, run_copy):
    code, log = run_training(None, *_args(demo_data, run_copy, "--resume=auto", "--max_iters=6"))
    assert code == 2, failure(log)
    error = next(line for line in log.splitlines() if line.startswith("error:"))
    assert "different LR schedule" in error and "decay_iters 4 -> 6" in error and "follows max_iters" in error
    assert "--allow_schedule_change=true" in error and "--lr_decay_iters=4" in error

    code, log = run_training(None, *_args(demo_data, run_copy, "--resume=auto", "--max_iters=6", "--lr=1e-3",
                                          "--allow_schedule_change=true"))
    assert code == 0, failure(log)
    assert "LR schedule changed on resume" in log and "lr 0.003 -> 0.001" in log
    lrs = {r["iter"]: r["lr"] for r in read_log(run_copy) if r["type"] == "train"}
    # the new schedule from the resumed step on (step index = iteration - 1)
    assert lrs[5] == pytest.approx(lr_at(4, 1e-3, 3e-4, 2, 6)) and lrs[6] == pytest.approx(lr_at(5, 1e-3, 3e-4, 2, 6))


def test_lr_decay_iters_keeps_the_old_curve_when_training_longer(demo_data, run_copy, reference):
    code, log = run_training(None, *_args(demo_data, run_copy, "--resume=auto", "--max_iters=5", "--lr_decay_iters=4"))
    assert code == 0, failure(log)
    assert "LR schedule is unchanged" in log


DISK_FULL = r"""
import errno, runpy, sys, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):  # the disk fills up while the second checkpoint is written
    if "iter_000004" in str(f):
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_disk_full_names_the_disk_and_the_size_needed(demo_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, RUN_PY, *_args(demo_data, run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert "disk full while writing checkpoint iter_000004" in error
    assert "needs about" in error and "MB (the size of iter_000002)" in error
    assert "keeping K checkpoints needs room for K+1" in error
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["iter_000002"]  # no partial iter_000004(.tmp) left, the earlier one intact
    assert layout.verify(run / "checkpoints" / "iter_000002") == []


def test_share_of_splits_every_file_once_and_keeps_rank_files_with_their_writer():
    files = {"accelerate/pytorch_model/mp_rank_00_model_states.pt": 900,
             "accelerate/pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt": 500,
             "accelerate/pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt": 500,
             "accelerate/random_states_0.pkl": 10, "accelerate/random_states_1.pkl": 10,
             "data_state_rank0.json": 1, "data_state_rank1.json": 1, "accelerate/latest": 1}
    for owned, spare in ((True, True), (True, False), (False, False)):
        shares = [layout.share_of(files, r, 2, owned=owned, spare_rank0=spare) for r in range(2)]
        assert sorted(shares[0] + shares[1]) == sorted(files)
    rank0, rank1 = (layout.share_of(files, r, 2, spare_rank0=True) for r in range(2))
    assert "accelerate/random_states_1.pkl" in rank1 and "data_state_rank0.json" in rank0
    assert "accelerate/pytorch_model/mp_rank_00_model_states.pt" in rank1  # rank 0 still writes model/


def test_deepspeed_loader_refuses_a_pickle_payload(tmp_path):
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from training.checkpoint import CheckpointError, _load_deepspeed_weights_only

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Payload()}, path)
    engine = type("Engine", (), {})()
    engine.checkpoint_engine = TorchCheckpointEngine()
    _load_deepspeed_weights_only(engine)
    with pytest.raises(CheckpointError, match="refused by the weights_only loader"):
        engine.checkpoint_engine.load(str(path))
    assert not (tmp_path / "pwned").exists()


def test_eval_uses_the_same_rule_and_skips_a_corrupted_latest(run_copy, caplog):
    from eval.checkpoint import resolve_checkpoint
    from eval.errors import EvalError

    _flip(run_copy / "checkpoints" / "iter_000004" / "model" / "model.safetensors")
    resolved = resolve_checkpoint(run_copy)
    assert resolved.checkpoint_dir.name == "iter_000002"
    assert "iter_000004" in caplog.text and "model.safetensors" in caplog.text
    with pytest.raises(EvalError, match="model.safetensors does not match"):
        resolve_checkpoint(run_copy / "checkpoints" / "iter_000004")


@pytest.mark.slow  # ~2.5 min (four 2-process launches); the single-process fall-back tests above run in CI
def test_two_ranks_verify_and_fall_back_together(demo_data, tmp_path):
    """ZeRO-1 on 2 processes: a corrupted rank-1 RNG state in the newest checkpoint (accelerate alone
    would skip it silently) makes every rank resume from the previous one; the curve is unchanged."""
    args = [*TINY_RUN, f"--data_dir={demo_data}", "--max_iters=6", "--global_batch_size=8", "--checkpoint_interval=2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, log = run_training("cpu.yaml", *args, f"--out_dir={ref}")
    assert code == 0, failure(log)
    shutil.copytree(ref, run)
    newest = run / "checkpoints" / "iter_000006"
    manifest = layout.read_manifest(newest)
    assert {"accelerate/random_states_1.pkl", "data_state_rank1.json",
            "accelerate/pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(manifest)
    _flip(newest / "accelerate" / "random_states_1.pkl")
    shard = run / "checkpoints" / "iter_000002" / "accelerate" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    _flip(shard, offset=5000)
    assert any("zero_pp_rank_0_mp_rank_00_optim_states.pt does not match" in p for p in layout.verify(shard.parents[2]))

    code, log = run_training("cpu.yaml", *args, f"--out_dir={run}", "--resume=auto")
    assert code == 0, failure(log)
    assert "skipping iter_000006" in log and "random_states_1.pkl does not match" in log
    configs = [r for r in read_log(run) if r["type"] == "config"]
    assert configs[-1]["resumed_from"].endswith("iter_000004")
    assert train_losses(run) == train_losses(ref)  # DeepSpeed's shards loaded (weights_only) exactly
    assert layout.verify(newest) == []


class _Position:
    """A train loader's resumable part: where the next sample is."""

    def __init__(self, at=0):
        self.at = at

    def state_dict(self):
        return {"at": self.at}

    def load_state_dict(self, state):
        self.at = state["at"]


def test_save_and_load_take_explicit_parts_and_resume_exactly(tmp_path):
    """No Trainer: the accelerator, model, scheduler, states and loader are handed in. The reference is
    the uninterrupted run: the step after a load must give the loss and LR the step after the save gave."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from modeling import DecoderConfig, DecoderForCausalLM
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.optim import build_optimizer, build_scheduler

    schedule = {"lr": 1e-2, "min_lr": 1e-3, "warmup_iters": 2, "decay_iters": 8, "max_iters": 8}
    data = torch.randint(0, 256, (5, 4, 17), generator=torch.Generator().manual_seed(0))

    def parts(seed):
        torch.manual_seed(seed)
        acc = Accelerator(cpu=True)
        model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", vocab_size=256))
        optimizer = build_optimizer(model, schedule["lr"], fused=False)
        scheduler = build_scheduler(optimizer, schedule["lr"], schedule["min_lr"], schedule["warmup_iters"],
                                    schedule["decay_iters"])
        model, optimizer = acc.prepare(model, optimizer)
        return acc, model, optimizer, scheduler

    def step(model, optimizer, scheduler, batch):
        loss = model(input_ids=batch[:, :-1], shift_labels=batch[:, 1:], return_logits=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return loss.item(), scheduler.get_last_lr()[0]

    try:
        acc, model, optimizer, scheduler = parts(seed=0)
        for i in range(3):
            step(model, optimizer, scheduler, data[i])
        path = save_checkpoint(acc, model, scheduler, out_dir=tmp_path, state={"iter": 3, "tokens": 192, "extra": {}},
                               data_loader=_Position(3), schedule=schedule)
        assert path == tmp_path / "checkpoints" / "iter_000003" and layout.verify(path) == []
        expected = [step(model, optimizer, scheduler, data[i]) for i in (3, 4)]

        acc, model, optimizer, scheduler = parts(seed=1)  # other weights, a fresh optimizer and schedule
        position = _Position()
        state = load_checkpoint(acc, model, scheduler, path, data_loader=position, schedule=schedule)
        assert (state["iter"], state["tokens"], state["world_size"], state["schedule"]) == (3, 192, 1, schedule)
        assert position.at == 3
        assert [step(model, optimizer, scheduler, data[i]) for i in (3, 4)] == expected
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
