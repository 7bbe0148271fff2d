"""Speed/memory flags change how, not what: activation checkpointing and torch.compile give the same
losses as the plain run (1 process, float32); --profile writes a trace."""

import json

import pytest

from train_helpers import TINY_RUN, failure, read_log, run_training, train_losses

ITERS = 4


@pytest.fixture(scope="module")
def plain(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={out}", f"--max_iters={ITERS}")
    assert code == 0, failure(log)
    return train_losses(out)


@pytest.mark.parametrize("every, layers", [(1, [0, 1]), (2, [0])])  # tiny-llama has 2 blocks
def test_activation_checkpointing_same_losses_and_profile_trace(demo_data, tmp_path, plain, every, layers):
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", f"--max_iters={ITERS}",
                             "--activation_checkpointing=true", f"--activation_checkpointing_every={every}",
                             "--profile=true", "--profile_start=2", "--profile_iters=2")
    assert code == 0, failure(log)
    assert read_log(tmp_path)[0]["activation_checkpointing_layers"] == layers
    losses = train_losses(tmp_path)
    for it in plain:  # recompute is the same arithmetic: only float reassociation could differ
        assert losses[it] == pytest.approx(plain[it], abs=1e-6)
    trace = tmp_path / "profile" / "trace_rank0.json"
    assert trace.exists() and json.loads(trace.read_text())["traceEvents"]
    assert "aten::" in (tmp_path / "profile" / "top_ops_rank0.txt").read_text()
    assert any(r["type"] == "profile" for r in read_log(tmp_path))


def test_compile_same_losses(demo_data, tmp_path, plain):
    code, log = run_training(None, *TINY_RUN, f"--data_dir={demo_data}", f"--out_dir={tmp_path}", f"--max_iters={ITERS}",
                             "--compile=true", timeout=900)
    assert code == 0, failure(log)
    losses = train_losses(tmp_path)
    for it in plain:  # inductor fuses elementwise ops in float32: tiny reassociation differences only
        assert losses[it] == pytest.approx(plain[it], abs=1e-4)
