"""Recipes and overrides, derived batch arithmetic, the LR schedule and decay groups (no launches)."""

from pathlib import Path

import pytest
import torch

from training.config import TrainConfig, load_config, parse_overrides
from training.optim import build_optimizer, lr_at, param_groups

RECIPES = sorted((Path(__file__).resolve().parents[2] / "training" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_its_model_exists(recipe):
    from modeling import DecoderConfig

    cfg = load_config(str(recipe))
    DecoderConfig.from_preset(cfg.preset, **cfg.model_overrides)


def test_seed_recipe_qwen3_8xb200():
    cfg = load_config("training/recipes/qwen3_1.8b_8xb200.yaml")
    assert (cfg.preset, cfg.seq_len, cfg.micro_batch_size, cfg.max_iters) == ("qwen3-1.8b", 2048, 22, 162_000)
    assert cfg.batch_plan(world_size=8).grad_accum_steps == 2  # micro 22 x 8 GPUs x 2 = 352 sequences = 720,896 tokens
    assert (cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.weight_decay, cfg.grad_clip) == (4e-4, 4e-5, 2000, 0.1, 1.0)
    assert (cfg.beta1, cfg.beta2, cfg.precision) == (0.9, 0.95, "bf16")


def test_overrides_are_typed():
    o = parse_overrides(["--max_iters=8", "--lr=3e-4", "--compile", "--out_dir", "runs/x", "--resume=auto"])
    assert o == {"max_iters": 8, "lr": "3e-4", "compile": True, "out_dir": "runs/x", "resume": "auto"}
    cfg = load_config(None, o)
    assert cfg.lr == 3e-4 and cfg.max_iters == 8 and cfg.compile is True
    with pytest.raises(ValueError, match=r"max_iters='ten'.*expected int"):
        load_config(None, {"max_iters": "ten"})


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ValueError, match=r"unknown recipe key 'max_iter' in the command line; did you mean max_iters"):
        load_config(None, {"max_iter": 3})
    bad = tmp_path / "r.yaml"
    bad.write_text("preset: tiny-llama\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown recipe key 'learning_rate' in .*r\.yaml"):
        load_config(str(bad))


def test_accumulation_is_derived_and_checked():
    cfg = TrainConfig(micro_batch_size=4, global_batch_tokens=8 * 256, seq_len=256)
    assert cfg.batch_plan(world_size=1).grad_accum_steps == 2 and cfg.batch_plan(world_size=2).grad_accum_steps == 1
    cfg = TrainConfig(micro_batch_size=3, global_batch_size=16)
    with pytest.raises(ValueError, match=r"not divisible by micro_batch_size=3 x world_size=2 = 6.*\[1, 2, 4, 8\]"):
        cfg.batch_plan(world_size=2).grad_accum_steps
    with pytest.raises(ValueError, match="not a multiple of seq_len"):
        TrainConfig(global_batch_tokens=1000, seq_len=256).validate()


def test_lr_schedule_by_hand():
    # warmup 10 to 1e-3, cosine to 1e-4 at step 110
    assert lr_at(0, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)
    assert lr_at(9, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-3)
    assert lr_at(60, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4 + 0.5 * 0.9e-3)  # half way: cos(pi/2) = 0
    assert lr_at(110, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)
    assert lr_at(500, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)


def test_weight_decay_only_on_matrices():
    from modeling import DecoderConfig, DecoderForCausalLM

    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-gpt2"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"bias", "weight"}
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, 1e-3)
    assert not opt.defaults.get("fused")  # CPU parameters: the fused kernel is for CUDA
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))  # tied head counted once


class _FakeScaler:
    """GradScaler's contract: step() then update() halve the scale exactly when the step was skipped."""

    def __init__(self):
        self.scale = 65536.0

    def get_scale(self):
        return self.scale


@pytest.mark.parametrize("overflow", [True, False])
def test_lr_schedule_does_not_advance_on_skipped_fp16_steps(monkeypatch, overflow):
    """fp16 outside DeepSpeed: a skipped update (inf/nan gradients) is seen through the loss scale, which
    also works for the fused AdamW (whose kernel skips on the device while accelerate reports no skip)."""
    import types

    from training import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "is_deepspeed", lambda acc: False)
    scaler = _FakeScaler()

    def step():  # AcceleratedOptimizer.step: scaler.step(optimizer); scaler.update()
        if overflow:
            scaler.scale /= 2

    t = trainer_mod.Trainer.__new__(trainer_mod.Trainer)
    t.cfg = types.SimpleNamespace(grad_clip=0.0)
    t.callbacks = []
    t.guard = trainer_mod.NonFiniteGuard("stop", 10, torch.device("cpu"))
    t.accelerator = types.SimpleNamespace(mixed_precision="fp16", scaler=scaler, backward=lambda loss: None,
                                          optimizer_step_was_skipped=False)  # what accelerate says with fused AdamW
    t.optimizer = types.SimpleNamespace(step=step, zero_grad=lambda set_to_none: None)
    t._backward_and_step(torch.zeros(()))
    assert t._step_was_applied() is not overflow


@pytest.mark.parametrize("applied", [True, False])
@pytest.mark.parametrize("precision", ["fp16", "bf16", "no"])
def test_deepspeed_skips_are_read_from_the_engine(monkeypatch, applied, precision):
    """DeepSpeed's ZeRO optimizers skip a step whose gradient norm is non-finite in every precision (fp16:
    loss-scale overflow too) and say so through was_step_applied(), a host bool: the trainer takes its
    answer for the LR schedule and the non-finite guard."""
    import types

    from training import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "is_deepspeed", lambda acc: True)
    t = trainer_mod.Trainer.__new__(trainer_mod.Trainer)
    t.callbacks = []
    t.guard = trainer_mod.NonFiniteGuard("stop", 10, torch.device("cpu"))
    t.accelerator = types.SimpleNamespace(mixed_precision=precision)
    t.model = types.SimpleNamespace(set_gradient_accumulation_boundary=lambda is_boundary: None,
                                    backward=lambda loss: None, step=lambda: None,
                                    was_step_applied=lambda: applied, optimizer=types.SimpleNamespace(overflow=False))
    assert t._backward_and_step(torch.zeros(())) == (None, applied)
    assert t._step_was_applied() is True  # nothing more to ask: the engine answered above


def test_help_lists_every_key_with_type_default_and_doc_without_importing_torch():
    import subprocess
    import sys
    import time

    from training.config import _FIELDS

    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-X", "importtime", "training/run.py", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert res.returncode == 0, res.stderr[-2000:]
    assert time.perf_counter() - start < 10
    assert " torch" not in {line.rsplit("|", 1)[-1].rstrip() for line in res.stderr.splitlines()}  # no torch import
    lines = res.stdout.splitlines()
    for name in _FIELDS:
        i = next(k for k, line in enumerate(lines) if line.strip().startswith(f"--{name}="))
        assert "(default: " in lines[i] and lines[i + 1].strip(), name  # a default and a description
    assert "--nonfinite_policy=STR {stop,skip}  (default: stop)" in res.stdout
    assert "--resume=STR  (default: not set)" in res.stdout and "None" not in res.stdout.split("Recipe keys")[1].split("--resume")[1].splitlines()[0]


def test_trackers_take_a_comma_list_and_unknown_names_are_refused():
    assert load_config(None, parse_overrides(["--trackers=tensorboard,wandb"])).trackers == ["tensorboard", "wandb"]
    assert load_config(None, parse_overrides(["--trackers=tensorboard"])).trackers == ["tensorboard"]
    assert load_config(None, parse_overrides(["--resume=None"])).resume is None  # the default --help shows
    with pytest.raises(ValueError, match="trackers: unknown \\['tensorbored'\\]"):
        load_config(None, parse_overrides(["--trackers=tensorbored"]))


def test_broken_recipe_yaml_is_one_line_naming_the_position(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: tiny-llama\nmodel_overrides: {hidden_size: 64\nlr: 1e-3\n")
    with pytest.raises(ValueError, match=r"r.yaml is not valid YAML at line \d+, column \d+") as info:
        load_config(str(recipe))
    assert "\n" not in str(info.value)


def test_gpu_launch_config_without_gpus_is_refused(tmp_path, monkeypatch):
    """accelerate_configs/8xb200.yaml on a CPU machine used to start 8 CPU processes and exit 0."""
    import training.worker as worker

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    monkeypatch.setattr(worker, "launch_config_file", lambda: repo / "accelerate_configs" / "8xb200.yaml")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    with pytest.raises(ValueError, match="runs 8 processes on one GPU each, this machine has 0 GPU"):
        worker.check_gpus_for_launch_config()
    monkeypatch.setattr(worker, "launch_config_file", lambda: repo / "accelerate_configs" / "cpu.yaml")
    worker.check_gpus_for_launch_config()  # the CPU config names no gpu_ids: fine


def test_batch_plan_is_the_one_arithmetic():
    """BatchPlan against hand arithmetic; the recipe, the planner and the sweep all build theirs with it."""
    from training.batch_plan import BatchPlan

    plan = BatchPlan.from_global(2048, 22, 8, global_tokens=720_896)
    assert (plan.grad_accum_steps, plan.global_sequences, plan.tokens_per_iter) == (2, 352, 720_896)
    assert plan.describe() == ("batch: 352 sequences x 2048 tokens = 720,896 tokens per iteration "
                               "(micro-batch 22 x accumulation 2 x 8 ranks)")
    assert BatchPlan.from_global(256, 4, 2) == BatchPlan(256, 4, 1, 2)  # no global batch: no accumulation
    assert plan.to_dict()["tokens_per_iter"] == 720_896
    with pytest.raises(ValueError, match="not both"):
        BatchPlan.from_global(256, 4, 2, global_sequences=8, global_tokens=2048)
    with pytest.raises(ValueError, match="not a whole number of 256-token sequences.*use 768 or 1024 tokens"):
        BatchPlan.from_global(256, 4, 2, global_tokens=1000)
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        BatchPlan(256, 0, 1, 1)
    # the recipe refuses a batch that divides on no cluster at load time, not at start-up
    with pytest.raises(ValueError, match="not divisible by micro_batch_size=3 x world_size=1"):
        TrainConfig(micro_batch_size=3, global_batch_size=16).validate()
