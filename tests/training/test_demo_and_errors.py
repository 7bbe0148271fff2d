"""The CPU demo recipe learns and logs every documented field; bad input fails before training."""

import json

import pytest

from train_helpers import ASSETS, TINY_RUN, failure, read_log, run_training

TRAIN_FIELDS = {"iter", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "tflops", "time_ms",
                "mem_allocated_gb", "mem_peak_gb", "mem_reserved_gb"}


def test_demo_recipe_learns_and_logs_everything(demo_data, tmp_path):
    """The README's demo recipe (shortened) under DeepSpeed ZeRO-1 on 2 CPU processes."""
    code, log = run_training("cpu.yaml", "--recipe", "training/recipes/demo_cpu.yaml", f"--data_dir={demo_data}",
                             f"--out_dir={tmp_path}", "--max_iters=120", "--eval_interval=60", "--checkpoint_interval=60",
                             "--log_interval=10", "--grad_norm_layers_interval=60")
    assert code == 0, failure(log)
    records = read_log(tmp_path)
    assert all("type" in r for r in records)
    config = records[0]
    assert config["type"] == "config"
    for key in ("attn_implementation", "world_size", "precision", "ds_stage", "flops_definition", "flops_per_token",
                "n_params", "tokens_per_iter", "device"):
        assert key in config, key
    assert config["attn_implementation"] == "sdpa" and config["attn_reason"] == "flash_attention_2 needs a CUDA GPU"
    # the batch plan: the recipe's numbers over 2 ranks, logged once and printed at start
    recipe, batch = config["recipe"], config["batch"]
    assert (batch["seq_len"], batch["micro_batch"], batch["world_size"]) == (recipe["seq_len"], recipe["micro_batch_size"], 2)
    assert batch["global_sequences"] == batch["micro_batch"] * batch["grad_accum_steps"] * 2
    assert config["tokens_per_iter"] == batch["tokens_per_iter"] == batch["global_sequences"] * recipe["seq_len"]
    assert f"{batch['tokens_per_iter']:,} tokens per iteration" in log
    train = [r for r in records if r["type"] == "train"]
    assert [r["iter"] for r in train] == list(range(10, 121, 10))
    for r in train:
        assert TRAIN_FIELDS <= set(r), TRAIN_FIELDS - set(r)
        assert r["mfu"] is None  # CPU: no made-up peak
        assert r["tokens_per_sec"] > 0 and r["time_ms"] > 0 and r["grad_norm"] > 0
    # warmup 30 -> lr peaks at iteration 30, then decays
    assert train[2]["lr"] == pytest.approx(3e-3) and train[-1]["lr"] < train[2]["lr"]
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[1])["loss"]
    assert train[-1]["loss"] < first - 2.0, (first, train[-1]["loss"])  # ~7.6 (uniform over 2048) -> < 5.6
    evals = [r for r in records if r["type"] == "eval"]
    assert [e["iter"] for e in evals] == [60, 120] and evals[1]["val_loss"] < evals[0]["val_loss"]
    norms = [r for r in records if r["type"] == "grad_norms"]
    assert norms and {"layer_00", "layer_03", "embed_tokens", "lm_head"} <= set(norms[0]["layers"])
    # the per-layer norms add up (in quadrature) to the global norm DeepSpeed reported for that step
    global_norm = {r["iter"]: r["grad_norm"] for r in train}[norms[0]["iter"]]
    assert sum(v**2 for v in norms[0]["layers"].values()) ** 0.5 == pytest.approx(global_norm, rel=1e-4)
    ckpt = tmp_path / "checkpoints" / "iter_000120"
    assert (ckpt / "model" / "model.safetensors").exists() and (ckpt / "model" / "tokenizer.json").exists()
    assert (ckpt / "hf" / "config.json").exists()  # native LlamaForCausalLM export of the final weights
    assert json.loads((ckpt / "hf" / "config.json").read_text())["model_type"] == "llama"
    # the native export holds the trained weights: same logits as our own saved model
    import torch
    from transformers import AutoModelForCausalLM

    from modeling import DecoderForCausalLM

    ours = DecoderForCausalLM.from_pretrained(ckpt / "model").eval()
    native = AutoModelForCausalLM.from_pretrained(ckpt / "hf").eval()
    ids = torch.randint(0, 2048, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(native(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-4, rtol=0)


def _fails_before_training(tmp_path, *args, config_file=None):
    code, log = run_training(config_file, *TINY_RUN, f"--out_dir={tmp_path / 'run'}", "--max_iters=3", *args, timeout=300)
    assert code != 0, log[-2000:]
    assert not (tmp_path / "run" / "log.jsonl").exists() or '"train"' not in (tmp_path / "run" / "log.jsonl").read_text()
    return log


def test_unknown_recipe_key(tmp_path, demo_data):
    log = _fails_before_training(tmp_path, f"--data_dir={demo_data}", "--max_iter=3")
    assert "unknown recipe key 'max_iter'" in log and "did you mean max_iters" in log


def test_accumulation_not_divisible(tmp_path, demo_data):
    log = _fails_before_training(tmp_path, f"--data_dir={demo_data}", "--global_batch_size=10", "--micro_batch_size=4")
    assert "global batch of 10 sequences is not divisible by micro_batch_size=4" in log


def test_missing_data_path(tmp_path):
    log = _fails_before_training(tmp_path, f"--data_dir={tmp_path / 'nope'}")
    assert "has no manifest.json; prepare it first: python -m data_prep.prepare" in log


def test_vocab_smaller_than_the_manifest_tokenizer(tmp_path, demo_data):
    log = _fails_before_training(tmp_path, f"--data_dir={demo_data}", "--vocab_size=1000")
    assert "vocabulary mismatch" in log and "2048" in log and "1000" in log


def test_deepspeed_json_conflicting_with_the_recipe(tmp_path, demo_data):
    """A DS JSON with a hard-coded accumulation (which accelerate would silently prefer) is refused."""
    ds = json.loads((ASSETS.parents[1] / "ds_configs" / "zero1.json").read_text())
    ds["gradient_accumulation_steps"] = 4
    (tmp_path / "zero1_bad.json").write_text(json.dumps(ds))
    yaml = (ASSETS.parents[1] / "accelerate_configs" / "cpu.yaml").read_text()
    (tmp_path / "bad.yaml").write_text(yaml.replace("ds_configs/zero1.json", str(tmp_path / "zero1_bad.json")))
    log = _fails_before_training(tmp_path, f"--data_dir={demo_data}", "--global_batch_size=8",
                                 config_file=str(tmp_path / "bad.yaml"))
    assert "sets gradient_accumulation_steps=4 but the recipe gives 1" in log and 'to "auto"' in log
