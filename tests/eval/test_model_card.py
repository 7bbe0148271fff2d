"""The model card's training section: hyperparameters, tokens trained and framework versions."""

from __future__ import annotations

from eval.model_card import framework_versions, render_model_card
from eval.runinfo import training_summary
from training.run_log import RunLogWriter, log_path

CONFIG = {"type": "config", "world_size": 8, "device": "NVIDIA B200", "precision": "bf16", "seq_len": 2048,
          "tokens_per_iter": 720896, "global_batch_sequences": 352, "grad_accum_steps": 2, "micro_batch_size": 22,
          "optimizer": "AdamW", "max_iters": 162000, "distributed_type": "DEEPSPEED", "ds_stage": 1,
          "recipe": {"lr": 3e-4, "min_lr": 3e-5, "warmup_iters": 2000, "lr_decay_iters": None, "max_iters": 162000,
                     "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "adam_eps": 1e-8, "grad_clip": 1.0,
                     "micro_batch_size": 22, "seq_len": 2048, "seed": 1337}}


def _card(tmp_path, config):
    writer = RunLogWriter(log_path(tmp_path))
    writer.write(config)
    writer.write({"type": "train", "iter": 100, "loss": 3.2, "tokens": 100 * 720896})
    training = training_summary(tmp_path, {"iter": 100, "tokens": 100 * 720896})
    return render_model_card(repo_id="org/m", model_class="Qwen3ForCausalLM", model_type="qwen3", n_params=1_800_000_000,
                             arch=None, training=training, evaluation=None, license="apache-2.0", datasets=[],
                             versions=framework_versions())


def test_card_lists_hyperparameters_tokens_and_versions(tmp_path):
    text = _card(tmp_path, CONFIG)
    assert "| tokens trained | 72,089,600 |" in text
    for row in ("| learning rate (peak) | 0.0003 |",
                "| learning-rate schedule | linear warmup over 2000 steps, then cosine decay to 3e-05 at step 162000 |",
                "| optimizer | AdamW (betas=(0.9, 0.95), eps=1e-08) |",
                "| weight decay | 0.1 (weights with 2 or more dimensions) |",
                "| gradient clipping (global norm) | 1 |",
                "| micro-batch per device (sequences) | 22 |", "| gradient accumulation steps | 2 |", "| devices | 8 |",
                "| global batch | 352 sequences x 2048 tokens = 720,896 tokens |",
                "| training steps (planned) | 162000 |", "| precision | bf16 |", "| seed | 1337 |"):
        assert row in text, row
    versions = framework_versions()
    assert {"Transformers", "PyTorch", "Accelerate"} <= set(versions)
    assert "At export (the training run's log does not record them):" in text
    assert f"- Transformers {versions['Transformers']}" in text


def test_versions_the_run_recorded_win_and_missing_hyperparameters_are_said(tmp_path):
    text = _card(tmp_path, {"type": "config", "versions": {"PyTorch": "2.9.0"}})
    assert "As recorded by the training run:" in text and "- PyTorch 2.9.0" in text
    assert "Not recorded (no run log with a config record found beside the checkpoint)." in text
