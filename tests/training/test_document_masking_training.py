"""document_masking=true in training: the loader's restarting position_ids reach the model, and a
2-process DeepSpeed ZeRO-1 run on CPU follows the 1-process loss curve with the same global batch.

Tolerance as tests/training/test_distributed_training.py: float32 on the same kernels, 2 ranks
all-reduce two half-batch gradients where 1 rank accumulates two micro-batches (summation order only).
"""

import pytest

from train_helpers import TINY_RUN, failure, read_log, run_training, train_losses

TOL = 2e-5
ITERS = 6


def _args(data, out, *extra):
    return [*TINY_RUN, f"--data_dir={data}", f"--out_dir={out}", f"--max_iters={ITERS}", "--global_batch_size=8", *extra]


def test_document_masking_zero1_two_processes_matches_one(demo_data, tmp_path):
    code, log = run_training(None, *_args(demo_data, tmp_path / "one", "--document_masking=true"))
    assert code == 0, failure(log)
    assert read_log(tmp_path / "one")[0]["grad_accum_steps"] == 2
    code, log = run_training("cpu.yaml", *_args(demo_data, tmp_path / "two", "--document_masking=true"))
    assert code == 0, failure(log)
    config = read_log(tmp_path / "two")[0]
    assert (config["distributed_type"], config["world_size"]) == ("DEEPSPEED", 2), config
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(two) == list(range(1, ITERS + 1))
    for it in one:
        assert two[it] == pytest.approx(one[it], abs=TOL), f"iteration {it}"
    assert one[ITERS] < one[1] - 0.3  # it trains
    # and the flag is live: the same run without it (same weights, same batches) has other losses
    code, log = run_training(None, *_args(demo_data, tmp_path / "plain"))
    assert code == 0, failure(log)
    plain = train_losses(tmp_path / "plain")
    assert plain[1] == pytest.approx(one[1], abs=1e-2)  # same start
    assert max(abs(plain[it] - one[it]) for it in one) > 1e-3, (plain, one)
