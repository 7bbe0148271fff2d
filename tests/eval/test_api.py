"""The Python API the in-training eval callback calls with a live DecoderForCausalLM."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from eval import evaluate_model

EVAL_DATA = Path(__file__).resolve().parents[2] / "tests" / "assets" / "eval"


def test_evaluate_live_model_leaves_it_untouched(tokenizer):
    from modeling import DecoderConfig, DecoderForCausalLM

    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-gpt2", vocab_size=len(tokenizer))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = (torch.get_rng_state(), random.getstate())
    pad = tokenizer.pad_token

    out = evaluate_model(model, tokenizer, tasks="arc_easy,openbookqa", data_dir=EVAL_DATA, limit=4,
                         batch_size=4, device="cpu", samples=True)

    assert set(out["results"]) == {"arc_easy", "openbookqa"}
    for r in out["results"].values():
        assert isinstance(r["acc"], float) and isinstance(r["acc_norm"], float) and r["n"] == 4 and r["n_total"] > 4
    assert out["settings"]["limit"] == 4 and out["settings"]["dtype"] == "float32"
    assert len(out["samples"]["arc_easy"]) == 4
    # The training run's model, RNG streams and tokenizer are as they were.
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng[0], torch.get_rng_state()) and rng[1] == random.getstate()
    assert tokenizer.pad_token == pad
