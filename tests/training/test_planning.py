"""training.planning against hand arithmetic, against torch's own bookkeeping on CPU, and the seed runs."""

import json
import math

import pytest
import torch

from modeling import DecoderConfig, DecoderForCausalLM, count_parameters, flops_per_token
from training.optim import build_optimizer
from training.planning import (
    GIB, activation_memory, chinchilla, chinchilla_loss, closed_form_optimum, estimate_memory, estimate_time,
    family_config, main, optimal, plan_batch,
)


# ------------------------------------------------------------------------------------------------
# Chinchilla
# ------------------------------------------------------------------------------------------------
def test_chinchilla_loss_at_a_hand_computed_point():
    # N = 1e9, D = 2e10: N^0.34 = 10^3.06 = 1148.15 -> 406.4 / 1148.15 = 0.35396
    #                    D^0.28 = 10^(0.28 * 10.30103) = 766.11 -> 410.7 / 766.11 = 0.53609
    #                    L = 1.69 + 0.35396 + 0.53609 = 2.58005
    assert chinchilla_loss(1e9, 2e10) == pytest.approx(2.58005, abs=1e-5)
    with pytest.raises(ValueError):
        chinchilla_loss(0, 1e9)


def test_closed_form_optimum_by_hand():
    # C = 6e20 -> C/6 = 1e20. alpha*A / (beta*B) = 138.176 / 114.996 = 1.20157; G = 1.20157^(1/0.62) = 1.34471
    # a = 0.28/0.62 = 0.451613: 1e20^a = 10^9.03226 = 1.07711e9 -> N_opt = 1.34471 * 1.07711e9 = 1.44839e9
    # b = 0.34/0.62 = 0.548387: 1e20^b = 10^10.96774 = 9.28415e10 -> D_opt = 9.28415e10 / 1.34471 = 6.90420e10
    opt = closed_form_optimum(6e20)
    assert opt["G"] == pytest.approx(1.34471, rel=1e-5)
    assert opt["n_params"] == pytest.approx(1.44839e9, rel=1e-4)
    assert opt["tokens"] == pytest.approx(6.90420e10, rel=1e-4)
    assert 6 * opt["n_params"] * opt["tokens"] == pytest.approx(6e20)
    # first-order condition of min L s.t. N*D fixed: alpha*A/N^alpha == beta*B/D^beta
    n, d = opt["n_params"], opt["tokens"]
    assert 0.34 * 406.4 / n**0.34 == pytest.approx(0.28 * 410.7 / d**0.28, rel=1e-9)
    # and it is a minimum along the constraint
    assert opt["loss"] < min(chinchilla_loss(n * k, d / k) for k in (0.8, 1.25))


def test_chinchilla_check_uses_total_parameters():
    r = chinchilla(preset="qwen3-1.8b", tokens_per_iter=720_896)
    assert r["n_params"] == 1_829_195_776 == count_parameters(DecoderConfig.from_preset("qwen3-1.8b"))["total"]
    assert r["target_tokens"] == 20 * 1_829_195_776
    assert r["target_iters"] == math.ceil(20 * 1_829_195_776 / 720_896)
    assert "total parameters" in r["n_params_definition"]
    assert chinchilla(1e9, 20e9, tokens_per_iter=1_000_000)["iters"] == 20_000
    assert chinchilla(1e9, 20e9)["status"] == "compliant"
    assert chinchilla(1e9, 10e9)["status"] == "under-trained"
    assert chinchilla(1e9, 30e9)["status"] == "over-trained"
    assert chinchilla(1e9, 2e10)["loss"] == pytest.approx(2.58005, abs=1e-5)


# ------------------------------------------------------------------------------------------------
# Compute-optimal search
# ------------------------------------------------------------------------------------------------
def test_optimal_grid_at_the_seed_budget():
    r = optimal(1.36e21, top=5)
    rows = r["unconstrained"]
    assert [x["loss"] for x in rows] == sorted(x["loss"] for x in rows)
    best = rows[0]
    # D is the budget over this repo's FLOPs per token of that very architecture
    config = family_config(best["family"], best["hidden"], best["layers"], 2048)
    assert best["tokens"] == pytest.approx(1.36e21 / flops_per_token(config, 2048))
    assert best["n_params"] == count_parameters(config)["total"]
    # same order of magnitude as the closed form (N ~ 2.1B), better than (or equal to) it under the fit
    assert 0.5 < best["n_params"] / r["closed_form"]["n_params"] < 2
    low, high = r["constraint"]["min_tokens_per_param"], r["constraint"]["max_tokens_per_param"]
    assert (low, high) == (15, 25)
    assert all(low <= x["tokens_per_param"] <= high for x in r["constrained"])
    assert r["constrained"][0]["loss"] >= best["loss"]
    assert {s["name"] for s in r["seed_comparison"]} == {"reported: unconstrained", "reported: D~20N-ish"}


def test_optimal_min_tokens_per_param():
    r = optimal(1e20, min_tokens_per_param=100, top=3)
    assert r["constrained"] and all(x["tokens_per_param"] >= 100 for x in r["constrained"])


def test_budget_too_small_for_any_architecture():
    with pytest.raises(ValueError, match="too small for any architecture"):
        optimal(1e12)
    assert main(["optimal", "--flops", "1e12"]) == 2


# ------------------------------------------------------------------------------------------------
# Memory: model states
# ------------------------------------------------------------------------------------------------
def test_measured_states_of_a_tiny_model_equal_the_planner():
    """fp32, stage 0: parameters, gradients and both AdamW moments as torch holds them after one step."""
    config = DecoderConfig.from_preset("tiny-llama")
    model = DecoderForCausalLM(config)
    optimizer = build_optimizer(model, lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    moments = sum(s[k].numel() * s[k].element_size() for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))
    assert params == 4 * count_parameters(config)["total"]
    for strategy in ("zero0", "ddp"):
        est = estimate_memory(config, micro_batch=2, seq_len=16, precision="fp32", strategy=strategy, world_size=1)
        c = est["components_gib"]
        assert c["weights"] * GIB == params
        assert c["gradients"] * GIB == grads
        assert c["optimizer"] * GIB == moments


def test_memory_of_a_small_model_by_hand():
    # tiny-llama: V=2048, h=64, L=2, 4 heads / 2 KV heads of 16, SwiGLU 192.
    # P = 2048*64 (embed) + 2*(64*(4+2*2)*16 + 64*64 + 3*64*192 + 2*64) + 64 + 2048*64 (head) = 360,768
    P = 360_768
    config = DecoderConfig.from_preset("tiny-llama")
    assert count_parameters(config)["total"] == P
    est = estimate_memory(config, micro_batch=2, seq_len=32, precision="bf16", strategy="zero2", world_size=2,
                          attention="flash", reduce_bucket=1000, cuda_context_gib=0.0, fragmentation=0.0, loss="plain")
    c = {k: v * GIB for k, v in est["components_gib"].items()}
    assert c["weights"] == pytest.approx(2 * P + 4 * P / 2)  # bf16 params + fp32 master shard
    assert c["gradients"] == pytest.approx(2 * P / 2 + 2 * 1000 * 2)  # bf16 grad shard + 2 bf16 ipg buckets
    assert c["optimizer"] == pytest.approx(8 * P / 2)  # Adam m, v shard
    assert c["step_transient"] == pytest.approx(4 * P / 2)  # fp32 copy of the gradient shard at the step
    # activations per token per layer, bf16 everywhere (e = r = 2), q = 64, kv = 32, i = 192:
    #   2 RMSNorms x ((4+2+2)*64 + 4) = 1032; q,k,v 2*(64+2*32) = 256; rotated q,k 2*(64+32) = 192;
    #   output 2*64 = 128; log-sum-exp 4*4 = 16; SwiGLU 4*192*2 = 1536          -> 3160 per layer
    # once per token: final norm 516 + token ids 8 + fp32 log-softmax 4*2048 + targets 8 = 8724
    # per micro-batch: RoPE cos/sin 2*32*16*2 = 2048
    tokens = 2 * 32
    saved = tokens * (2 * 3160 + 8724) + 2048
    working = tokens * 8 * 2048  # fp32 gradients of log-probs and logits at the start of backward
    act = est["activation_model"]
    assert act["layer_bytes_per_token"] == 3160
    assert act["saved_bytes"] == saved and act["backward_working_bytes"] == working
    assert c["activations"] == saved + working
    assert est["total_gib"] * GIB == pytest.approx(c["weights"] + c["gradients"] + c["optimizer"] + saved + working)
    # overhead: the context constant plus 5% of everything else
    with_overhead = estimate_memory(config, micro_batch=2, seq_len=32, strategy="zero2", world_size=2, reduce_bucket=1000,
                                    loss="plain")
    assert with_overhead["total_gib"] == pytest.approx(1.0 + 1.05 * est["total_gib"])


@pytest.mark.parametrize("strategy, weights, grads, opt", [
    # what is divided by the world size W (P params, bf16 mixed precision, fp32 grad accumulation for zero1)
    ("ddp", "4*P + 2*M", "4*P + 4*P", "8*P"),  # fp32 params + autocast bf16 copies of matmuls; grads + DDP buckets
    ("zero0", "2*P + 4*P", "2*P", "8*P"),
    ("zero1", "2*P + 4*P/W", "2*P + 4*P", "8*P/W"),  # BF16_Optimizer's fp32 accumulation buffer is full size
    ("zero2", "2*P + 4*P/W", "2*P/W", "8*P/W"),
    ("zero3", "2*P/W + 4*P/W", "2*P/W", "8*P/W"),
    ("fsdp", "4*P/W", "4*P/W", "8*P/W"),
])
def test_what_each_strategy_shards(strategy, weights, grads, opt):
    W = 8
    config = DecoderConfig.from_preset("llama3-1.5b")
    est = estimate_memory(config, micro_batch=1, seq_len=2048, strategy=strategy, world_size=W, reduce_bucket=0,
                          max_live_parameters=0, loss="plain")  # plain: autocast keeps a bf16 copy of the head too
    n = est["n_params"]
    m = n - 128000 * 2048 - 18 * 2 * 2048 - 2048  # M: matmul weights = P - input embedding - norm gains
    value = lambda expr: eval(expr, {"P": n, "W": W, "M": m})  # noqa: E731
    by = {k: sum(t["gib"] for t in est["terms"] if t["component"] == k and "unsharded" not in t["what"]) * GIB
          for k in ("weights", "gradients", "optimizer")}
    assert by["weights"] == pytest.approx(value(weights))
    assert by["gradients"] == pytest.approx(value(grads))
    assert by["optimizer"] == pytest.approx(value(opt))


# ------------------------------------------------------------------------------------------------
# Memory: activations, against what autograd really keeps (CPU)
# ------------------------------------------------------------------------------------------------
def _saved_bytes(config: DecoderConfig, mode: str, batch: int, seq: int, **forward_kwargs) -> int:
    """Unique storages autograd saves for backward during one forward (parameters excluded)."""
    model = DecoderForCausalLM(config)
    if mode == "bf16":  # what DeepSpeed does: the module itself in bf16
        model = model.to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    labels = torch.randint(0, config.vocab_size, (batch, seq))  # its own storage, as a real loader's
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(input_ids=ids, shift_labels=labels, **forward_kwargs)
    weight_copies = 0
    if mode == "autocast":  # bf16 copies of the matmul weights (the planner books them as 2M of weights)
        weight_copies = 2 * sum(p.numel() for n, p in model.named_parameters()
                                if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
        if forward_kwargs.get("return_logits", True):  # the plain path's head matmul keeps its copy
            weight_copies += 2 * model.lm_head.weight.numel()
    # - the 0-d fp32 loss for the backward of the mean (plain) or 1/n_valid (chunked)
    return sum(seen.values()) - weight_copies - 4


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3", "tiny-gpt2"])
@pytest.mark.parametrize("mode, e, r", [("bf16", 2, 2), ("fp32", 4, 4), ("autocast", 2, 4)])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activation_formula_equals_saved_tensors(preset, mode, e, r, attention):
    config = DecoderConfig.from_preset(preset, attn_implementation=attention)
    batch, seq = 2, 48
    est = activation_memory(config, seq, batch, compute_bytes=e, residual_bytes=r, attention=attention, loss="plain")
    measured = _saved_bytes(config, mode, batch, seq)
    if config.norm_type == "layernorm" and mode == "bf16":
        # CPU's bf16 LayerNorm keeps mean and rstd in bf16 (2 + 2 bytes per token), CUDA's in fp32 (4 + 4)
        # as the formula assumes: 4 bytes per token for each of the 2L + 1 norms
        measured += 4 * batch * seq * (2 * config.num_hidden_layers + 1)
    assert measured == est["saved_bytes"]


@pytest.mark.parametrize("mode, e, r", [("bf16", 2, 2), ("fp32", 4, 4), ("autocast", 2, 4)])
def test_chunked_loss_keeps_no_logits(mode, e, r):
    """model(..., return_logits=False): modeling.losses.linear_cross_entropy keeps d/dhidden and an fp32
    d/dweight instead of the (tokens, vocab) log-softmax."""
    pytest.importorskip("modeling.losses")
    config = DecoderConfig.from_preset("tiny-qwen3", attn_implementation="sdpa")
    batch, seq = 2, 48
    chunked = activation_memory(config, seq, batch, compute_bytes=e, residual_bytes=r, attention="sdpa", loss="chunked")
    plain = activation_memory(config, seq, batch, compute_bytes=e, residual_bytes=r, attention="sdpa", loss="plain")
    assert _saved_bytes(config, mode, batch, seq, return_logits=False) == chunked["saved_bytes"]
    V, h = config.vocab_size, config.hidden_size
    assert plain["saved_bytes"] - chunked["saved_bytes"] == batch * seq * (4 * V + 8) - 4 * V * h


def test_korthikanti_gpt_block_is_reproduced():
    """GPT block, 16-bit, eager attention, dropout: 34*h + 5*a*s per token in Korthikanti et al. 2022;
    ours is 34*h + 7*a*s (fp32 softmax) + 16 (LayerNorm mean/rstd in fp32)."""
    config = DecoderConfig.from_preset("gpt2-124m", dropout=0.1)
    h, a, s = 768, 12, 1024
    act = activation_memory(config, s, 1, compute_bytes=2, residual_bytes=2, attention="eager")
    assert act["layer_bytes_per_token"] == 34 * h + 7 * a * s + 16


def test_flash_drops_the_quadratic_term_and_checkpointing_keeps_block_inputs():
    config = DecoderConfig.from_preset("llama3-1.5b")
    flash = [activation_memory(config, s, 1, attention="flash")["layer_bytes_per_token"] for s in (1024, 4096)]
    eager = [activation_memory(config, s, 1, attention="eager")["layer_bytes_per_token"] for s in (1024, 4096)]
    assert flash[0] == flash[1]
    assert eager[1] - eager[0] == (4 + 2) * 16 * (4096 - 1024)  # (fp32 + bf16 softmax) * heads * extra length
    full = activation_memory(config, 2048, 4)
    ckpt = activation_memory(config, 2048, 4, checkpointing=True)
    tokens = 4 * 2048
    head = sum(full["once_per_token_bytes"].values())
    rope = sum(full["per_micro_batch_bytes"].values())
    assert ckpt["saved_bytes"] == tokens * (18 * 2 * 2048 + head) + rope
    assert ckpt["peak_bytes"] < full["peak_bytes"] / 2


# ------------------------------------------------------------------------------------------------
# Batch planner against the seed runs
# ------------------------------------------------------------------------------------------------
def test_seed_qwen3_on_8xb200():
    """Seed: qwen3-1.8b, 8xB200, seq 2048, micro-batch 22 x 2 accumulation = 352 sequences.
    With the chunked loss, or with activation checkpointing, the planner gives exactly that (22 is the
    largest divisor of the 44 sequences per GPU that fits). With the plain loss and no recompute, the
    estimate is ~9 GiB per sequence (the 151k-vocab fp32 loss alone is 12 bytes x 151,643 per token),
    22 sequences would need ~225 GiB > 180 GiB, and the planner falls back to 11 x 4: the seed run
    must have avoided the full fp32 logits (a fused/chunked loss) or recomputed activations."""
    for kwargs in ({"loss": "chunked"}, {"activation_checkpointing": True, "loss": "plain"}):
        plan = plan_batch("B200", 8, "qwen3-1.8b", 2048, global_batch_sequences=352, **kwargs)
        assert (plan["micro_batch"], plan["grad_accum_steps"]) == (22, 2), kwargs
        assert 22 <= plan["max_micro_batch_fit"] < 44
    plain = plan_batch("B200", 8, "qwen3-1.8b", 2048, global_batch_sequences=352, loss="plain")
    assert (plain["micro_batch"], plain["grad_accum_steps"]) == (11, 4)
    at22 = estimate_memory("qwen3-1.8b", micro_batch=22, seq_len=2048, world_size=8, loss="plain")["total_gib"]
    assert at22 > 180
    assert plan_batch("B200", 8, "qwen3-1.8b", 2048, global_batch_tokens=352 * 2048,
                      activation_checkpointing=True, loss="plain")["micro_batch"] == 22


@pytest.mark.parametrize("preset, ckpt", [
    ("gpt2-1.36b", False), ("llama2-1.36b", False),  # small vocabularies: no recompute needed
    ("llama3-1.5b", True), ("llama3-2.2b", True), ("qwen3-1.8b", True),  # 128k-152k vocabularies
])
def test_seed_runs_on_2xa6000_use_small_micro_batches(preset, ckpt):
    """Seeds on 2xA6000 (48 GB) used micro-batches of 4-8 with accumulation; at seq 2048 and a
    256-sequence global batch the planner lands in that range."""
    # the seeds' loss: the full fp32 logits (our default, the chunked loss, fits larger micro-batches)
    r = plan_batch("A6000", 2, preset, 2048, global_batch_sequences=256, activation_checkpointing=ckpt, loss="plain")
    assert 4 <= r["micro_batch"] <= 8
    assert r["micro_batch"] * r["grad_accum_steps"] * 2 == 256
    assert r["memory_gib"] <= 48 * 0.95


def test_batch_errors_name_the_fix():
    with pytest.raises(ValueError, match="not divisible by 8 GPUs; use 344 or 352"):
        plan_batch("B200", 8, "qwen3-1.8b", 2048, global_batch_sequences=350)
    with pytest.raises(ValueError, match="not a whole number of 2048-token sequences"):
        plan_batch("B200", 8, "qwen3-1.8b", 2048, global_batch_tokens=1000)
    with pytest.raises(ValueError, match="known GPUs: .*A6000"):
        plan_batch("T4", 1, "qwen3-1.8b", 2048)
    with pytest.raises(ValueError, match="does not fit .* these fit micro-batch 1: --strategy zero3"):
        plan_batch("RTX 3090", 4, "llama3-2.2b", 2048, strategy="ddp")
    with pytest.raises(ValueError, match="nothing in this model fits"):
        plan_batch("RTX 3090", 1, "llama3-2.2b", 2048)


# ------------------------------------------------------------------------------------------------
# Time
# ------------------------------------------------------------------------------------------------
def test_time_estimate_by_hand():
    fpt = flops_per_token(DecoderConfig.from_preset("llama3-1.5b"), 2048)
    r = estimate_time("llama3-1.5b", tokens=1e9, setups=["1xH100", "2xA6000"], mfu=0.5, tokens_per_iter=1_000_000)
    h100, a6000 = r["setups"]
    assert h100["seconds"] == pytest.approx(1e9 * fpt / (0.5 * 989.4e12))
    assert a6000["seconds"] == pytest.approx(1e9 * fpt / (0.5 * 154.8e12 * 2))
    assert r["iters"] == 1000 and h100["seconds_per_iter"] == pytest.approx(h100["seconds"] / 1000)
    default = estimate_time("llama3-1.5b")  # 20 N tokens on 2xA6000 vs 8xB200
    assert default["tokens"] == 20 * count_parameters(DecoderConfig.from_preset("llama3-1.5b"))["total"]
    assert [s["setup"] for s in default["setups"]] == ["2xA6000", "8xB200"]
    assert default["setups"][0]["days"] / default["setups"][1]["days"] == pytest.approx(8 * 2250 / (2 * 154.8))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"]] + [[cmd, "--help"] for cmd in ("chinchilla", "optimal", "memory", "batch", "time")])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_cli_tables_and_json(tmp_path, capsys):
    assert main(["memory", "--preset", "tiny-llama", "--micro-batch", "2", "--seq-len", "64",
                 "--strategy", "zero1,zero3", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "total (peak)" in out and "zero3" in out and "bytes/token/layer" in out
    assert main(["chinchilla", "--params", "1B", "--tokens", "20B", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "compliant"
    target = tmp_path / "batch.json"
    assert main(["batch", "--gpu", "h100", "--num-gpus", "8", "--preset", "llama3-1.5b",
                 "--global-batch-sequences", "256", "--json", str(target)]) == 0
    assert "divisibility" in capsys.readouterr().out
    assert json.loads(target.read_text())["global_batch_sequences"] == 256
    assert main(["time", "--preset", "tiny-llama", "--tokens", "1M", "--gpu", "A100", "--num-gpus", "4"]) == 0
    assert "4xA100" in capsys.readouterr().out
    assert main(["batch", "--gpu", "T4", "--preset", "tiny-llama"]) == 2
    assert "known GPUs" in capsys.readouterr().err


def test_time_with_mfu_measured_in_a_log(tmp_path, capsys):
    from training.run_log import RunLogWriter, log_path

    def log(run, mfus):  # written as training writes it
        writer = RunLogWriter(log_path(run))
        writer.begin(0)
        records = [{"type": "config", "max_iters": 2}] + [
            {"type": "train", "iter": i + 1, "loss": 3.0, "time_ms": 100.0, "tokens_per_sec": 1e4, "mfu": m}
            for i, m in enumerate(mfus)]
        for r in records:
            writer.write(r)
        return str(run)

    gpu_run = log(tmp_path / "gpu", [0.2, 0.3])
    assert main(["time", "--preset", "tiny-llama", "--tokens", "1M", "--gpu", "H100", "--mfu-from-log", gpu_run,
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["mfu"] == pytest.approx(0.25)
    assert main(["time", "--preset", "tiny-llama", "--mfu-from-log", log(tmp_path / "cpu", [None, None])]) == 2
    assert "no MFU values" in capsys.readouterr().err


def test_partial_checkpointing_keeps_inputs_of_recomputed_blocks_only():
    """checkpoint_every = N recomputes blocks 0, N, 2N, ... (transformers' every_n_layers): those keep
    their r*h input, the others everything they save without checkpointing."""
    config = DecoderConfig.from_preset("llama3-1.5b")  # 18 blocks
    L, h, tokens = 18, config.hidden_size, 2 * 2048
    full = activation_memory(config, 2048, 2)
    head = sum(full["once_per_token_bytes"].values())
    rope = sum(full["per_micro_batch_bytes"].values())
    layer = full["layer_bytes_per_token"]
    for every, recomputed in ((1, 18), (2, 9), (4, 5), (18, 1)):
        act = activation_memory(config, 2048, 2, checkpointing=True, checkpoint_every=every)
        assert act["recomputed_layers"] == recomputed
        assert act["saved_bytes"] == tokens * (recomputed * 2 * h + (L - recomputed) * layer + head) + rope
    with pytest.raises(ValueError, match="checkpoint_every"):
        activation_memory(config, 2048, 2, checkpointing=True, checkpoint_every=0)


def test_batch_planner_recomputes_only_what_memory_demands():
    """With checkpointing asked for, the plan keeps the micro-batch it found and then recomputes the
    fewest blocks that still fit it: every sparser every-N would exceed the budget."""
    plan = plan_batch("H100", 1, "llama3-1.5b", 2048, global_batch_sequences=16, activation_checkpointing=True)
    every = plan["activation_checkpointing_every"]
    kwargs = dict(micro_batch=plan["micro_batch"], seq_len=2048, world_size=1, activation_checkpointing=True)
    assert estimate_memory("llama3-1.5b", activation_checkpointing_every=every, **kwargs)["total_gib"] <= plan["budget_gib"]
    for sparser in range(every + 1, 19):
        if -(-18 // sparser) < -(-18 // every):  # fewer blocks recomputed
            assert estimate_memory("llama3-1.5b", activation_checkpointing_every=sparser, **kwargs)["total_gib"] > plan["budget_gib"]
    assert 1 < every < 18 and f"--activation_checkpointing_every={every}" in " ".join(plan["notes"])


# ------------------------------------------------------------------------------------------------
# One source: what the planner assumes is what the model does
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(__import__("modeling").PRESETS))
def test_planner_loss_chunk_is_the_models(preset, monkeypatch):
    """The memory planner's chunk size for the chunked LM-head loss equals the one the model's forward
    passes to the loss kernel, for every preset's vocabulary (a 1-layer, narrow copy of the preset:
    the chunk depends on the vocabulary only)."""
    from modeling import losses
    from training.planning.memory import model_loss_chunk_size

    config = DecoderConfig.from_preset(preset, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                       num_key_value_heads=2, head_dim=16, intermediate_size=32)
    seen = []
    apply = losses._LinearCrossEntropy.apply
    monkeypatch.setattr(losses._LinearCrossEntropy, "apply",
                        lambda h, w, t, chunk: seen.append(chunk) or apply(h, w, t, chunk))
    torch.manual_seed(0)
    model = DecoderForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (1, 9))
    model(input_ids=ids[:, :-1], shift_labels=ids[:, 1:], return_logits=False)
    assert seen == [model_loss_chunk_size(config)]
    assert estimate_memory(config, micro_batch=1, seq_len=8)["activation_model"]["loss_chunk_size"] == seen[0]


def test_planners_refuse_sequences_longer_than_a_learned_position_table():
    """gpt2-124m has 1024 learned positions: no memory, batch or time plan for 4096-token sequences
    (the same error training raises, from DecoderConfig.check_seq_len)."""
    for plan in (lambda: plan_batch("H100", 1, "gpt2-124m", 4096),
                 lambda: estimate_memory("gpt2-124m", micro_batch=1, seq_len=4096),
                 lambda: estimate_time("gpt2-124m", tokens=1e9, seq_len=4096)):
        with pytest.raises(ValueError, match="seq_len=4096 exceeds the learned position table"):
            plan()
    assert plan_batch("H100", 1, "gpt2-124m", 1024)["micro_batch"] >= 1
