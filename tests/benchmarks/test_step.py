"""training.benchmark: the throughput/MFU arithmetic by hand, the JSON it writes, a real tiny CPU run
against the native model; and the chunked LM-head loss it benchmarks (modeling/losses.py) against
the plain logits + cross-entropy path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling import DecoderConfig, DecoderForCausalLM, flops_per_token
from modeling.losses import linear_cross_entropy
from training import benchmark

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------
def test_flops_tokens_tflops_and_mfu_by_hand():
    # tiny-llama: C=64, L=2, 4 heads x 16 (H=64), 2 KV heads, SwiGLU 192, V=2048, untied.
    # per layer: qkv 64*(4+2*2)*16 = 8192, o 64*64 = 4096, MLP 3*64*192 = 36864, 2 norms 128 -> 49280
    # N = 2*49280 + 64 (final norm) + 2048*64 (LM head) = 229,696
    # FLOPs/token at S=256: 6N + 12*L*H*S = 1,378,176 + 393,216 = 1,771,392
    config = DecoderConfig.from_preset("tiny-llama")
    fpt = flops_per_token(config, 256)
    assert fpt == 1_771_392
    # micro-batch 4 x 256 = 1024 tokens per step; median of the fake step times 0.3 s
    times = [0.5, 0.1, 0.3, 0.4, 0.2]
    m = benchmark.throughput_metrics(times, 1024, fpt, peak_flops_per_sec=1e12)
    assert m["tokens_per_sec"] == pytest.approx(1024 / 0.3)  # 3413.33
    assert m["tflops"] == pytest.approx(1024 / 0.3 * 1_771_392 / 1e12)  # 0.0060463
    assert m["mfu"] == pytest.approx(1024 / 0.3 * 1_771_392 / 1e12)  # peak of exactly 1 TFLOP/s
    assert m["tokens_per_sec_best_step"] == pytest.approx(1024 / 0.1)
    st = m["step_time_ms"]
    assert st["median"] == pytest.approx(300.0) and st["min"] == pytest.approx(100.0)
    assert st["p90"] == pytest.approx(460.0)  # linear interpolation: 0.4 + 0.6 * (0.5 - 0.4)
    assert st["mean"] == pytest.approx(300.0) and st["n"] == 5
    # an H100 SXM (989.4 dense bf16 TFLOP/s) at 50% MFU on llama3-1.5b at seq 2048
    big = DecoderConfig.from_preset("llama3-1.5b")
    fpt_big = flops_per_token(big, 2048)
    tokens_per_step = 8 * 2048
    step = tokens_per_step * fpt_big / (0.5 * 989.4e12)
    assert benchmark.throughput_metrics([step], tokens_per_step, fpt_big, 989.4e12)["mfu"] == pytest.approx(0.5)
    assert benchmark.throughput_metrics(times, 1024, fpt, None)["mfu"] is None  # CPU: no peak, no MFU


def test_percentile_rounds_and_geomean():
    assert benchmark.percentile([1.0], 90) == 1.0
    assert benchmark.percentile([1, 2, 3, 4], 50) == 2.5
    assert benchmark.split_rounds(10, 4) == [3, 3, 2, 2]
    assert benchmark.split_rounds(3, 4) == [1, 1, 1]  # never more steps than asked
    assert benchmark.geomean([0.5, 2.0]) == pytest.approx(1.0)


def test_ratios_pair_ours_with_native_of_the_same_backend_and_compile():
    variants = benchmark.plan_variants(["eager", "sdpa"], [False], ["chunked", "full"], native=True)
    assert [v.label for v in variants] == [
        "ours/eager/compile-off/chunked", "ours/eager/compile-off/full", "native/eager/compile-off/full",
        "ours/sdpa/compile-off/chunked", "ours/sdpa/compile-off/full", "native/sdpa/compile-off/full",
    ]
    speed = {"eager": (300.0, 200.0), "sdpa": (500.0, 400.0)}  # (ours, native) tokens/s
    rows = {}
    for v in variants:
        tps = speed[v.attn][0 if v.impl == "ours" else 1]
        rows[v.label] = {"label": v.label, "status": "ok", "tokens_per_sec": tps, "tokens_per_sec_best_step": tps,
                         "peak_memory_gb": 1.0, "tflops": 0.0, "mfu": None, "reason": None}
    rows["ours/sdpa/compile-off/full"].update(status="error", reason="boom")
    benchmark._add_ratios(rows, variants)
    assert rows["ours/eager/compile-off/chunked"]["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.5)
    assert rows["ours/sdpa/compile-off/chunked"]["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.25)
    assert rows["ours/sdpa/compile-off/full"]["ratio_tokens_per_sec_vs_native"] is None
    assert rows["native/sdpa/compile-off/full"]["ratio_tokens_per_sec_vs_native"] is None
    summary = benchmark.summarize(list(rows.values()))
    assert summary["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.25)  # the worst configuration
    assert summary["ratio_tokens_per_sec_vs_native_max"] == pytest.approx(1.5)
    assert summary["ratio_tokens_per_sec_vs_native_geomean"] == pytest.approx((1.5 * 1.5 * 1.25) ** (1 / 3))
    assert summary["skipped"] == {"ours/sdpa/compile-off/full": "boom"}


def test_cpu_peak_tensor_bytes_by_hand():
    a = torch.zeros(1000)  # 4000 bytes, alive before: the baseline
    with benchmark.PeakTensorBytes([a]) as tracker:
        assert tracker.live() == 4000
        b = torch.cat([a, a])  # + 8000
        c = b[:500] * 1  # + 2000 -> 14000, the peak
        view = c.view(-1)  # a view shares c's storage: + 0
        del b  # - 8000
        d = c.repeat(2)  # + 4000 -> 10000
        c.mul_(2)  # in place: + 0
    assert tracker.peak == 14000
    assert tracker.live() == 10000
    assert view.shape == (500,) and d.shape == (1000,)


def test_cli_rejects_unknown_choices():
    with pytest.raises(SystemExit, match="flash"):
        benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu", "--attn", "sdpa,flash"]))
    with pytest.raises(SystemExit, match="micro-batch"):
        benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu", "--micro-batch", "big"]))


@pytest.mark.parametrize("argv, message", [
    (["--preset", "llama9"], "unknown preset 'llama9'"),
    (["--set", "hiden_size=64"], "no field 'hiden_size'; did you mean hidden_size"),
    (["--set", "hidden_size=wide"], "hidden_size: .*expected int"),
])
def test_bad_model_arguments_stop_before_any_run(argv, message, tmp_path):
    """A clear one-line error (SystemExit), no traceback, nothing timed and no results files written."""
    with pytest.raises(SystemExit, match=message):
        benchmark.main(["--device", "cpu", "--json", str(tmp_path / "r.json"), *argv])
    assert not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------------------------
# A real tiny CPU run, in a subprocess, exactly as documented
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    cmd = [sys.executable, "-m", "training.benchmark", "--preset", "tiny-llama", "--device", "cpu",
           "--json", str(out), "--iters", "3", "--warmup", "1"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_tiny_cpu_run_reports_a_positive_ratio_against_native(tiny_run):
    result, stdout = tiny_run
    assert result["ratio_tokens_per_sec_vs_native"] > 0
    assert "| ours/sdpa/compile-off/chunked |" in stdout  # the markdown table is printed too
    ok = {r["label"]: r for r in result["rows"] if r["status"] == "ok"}
    for attn in ("eager", "sdpa"):
        ours, native = ok[f"ours/{attn}/compile-off/chunked"], ok[f"native/{attn}/compile-off/full"]
        assert native["native_class"] == "LlamaForCausalLM"
        assert ours["ratio_tokens_per_sec_vs_native"] == pytest.approx(ours["tokens_per_sec"] / native["tokens_per_sec"])
        # same weights and batch: the first-step losses agree (fp32)
        assert ours["loss_first_step"] == pytest.approx(native["loss_first_step"], abs=1e-4)
        assert ours["step_time_ms"]["n"] == 3
    # flash_attention_2 cannot run on a CPU: reported, not a crash
    flash = [r for r in result["rows"] if r["attn"] == "flash_attention_2"]
    assert flash and all(r["status"] == "skipped" and "flash" in r["reason"] for r in flash)


def test_json_schema(tiny_run):
    result, _ = tiny_run
    top = {"schema_version": int, "tool": str, "created_utc": str, "command": str, "device": dict,
           "environment": dict, "settings": dict, "model": dict, "rows": list, "summary": dict,
           "ratio_tokens_per_sec_vs_native": float}
    for key, typ in top.items():
        assert isinstance(result[key], typ), key
    assert result["device"]["label"] == "cpu" and result["device"]["peak_flops"] is None
    assert result["model"]["flops_per_token"] == flops_per_token(DecoderConfig.from_preset("tiny-llama"), 256)
    assert result["settings"]["seq_len"] == 256 and result["settings"]["dtype"] == "fp32"
    row_types = {"label": str, "impl": str, "attn": str, "compile": bool, "loss": str, "status": str,
                 "micro_batch": int, "seq_len": int, "tokens_per_step": int, "step_time_ms": dict,
                 "tokens_per_sec": float, "tokens_per_sec_best_step": float, "tflops": float,
                 "loss_first_step": float, "memory_kind": str, "peak_memory_gb": float, "warmup_s": float}
    for row in result["rows"]:
        assert row["status"] in ("ok", "skipped", "oom", "error")
        if row["status"] != "ok":
            assert isinstance(row["reason"], str)
            continue
        for key, typ in row_types.items():
            assert isinstance(row[key], typ), (row["label"], key)
        assert set(row["step_time_ms"]) == {"median", "min", "p90", "mean", "n"}
        assert row["mfu"] is None  # CPU
        assert row["host_syncs_per_step"] is None  # counted on CUDA only
        assert row["memory_kind"] == "cpu_peak_live_tensor_bytes" and row["peak_memory_gb"] > 0
        if row["impl"] == "ours":
            assert isinstance(row["ratio_tokens_per_sec_vs_native"], float)
    s = result["summary"]
    assert s["ratio_tokens_per_sec_vs_native"] == result["ratio_tokens_per_sec_vs_native"]
    assert set(s["compared"]) == {"ours/eager/compile-off/chunked", "ours/sdpa/compile-off/chunked"}


def test_markdown_and_default_paths(tiny_run):
    result, _ = tiny_run
    md = benchmark.to_markdown(result)
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + len(result["rows"])  # header, rule, rows
    json_path, md_path = benchmark.default_paths(result, "tiny-llama")
    assert json_path.parent == REPO / "benchmarks" / "results"
    assert json_path.name == f"cpu-{result['created_utc'][:10]}-tiny-llama.json" and md_path.suffix == ".md"
    assert benchmark.default_paths(result, None)[0].name == f"cpu-{result['created_utc'][:10]}.json"


# ----------------------------------------------------------------------------------------------
# The chunked LM-head loss (forward(..., return_logits=False)) against the plain path
# ----------------------------------------------------------------------------------------------
FP32_TOL = dict(atol=1e-6, rtol=1e-5)  # float32, same math, only the summation order differs


def _loss_and_grads(model, ids, labels, return_logits, amp=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(input_ids=ids, labels=labels, return_logits=return_logits)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-qwen3"])  # untied, tied, qk-norm
def test_chunked_loss_and_grads_equal_the_plain_path_fp32(preset):
    model = DecoderForCausalLM(DecoderConfig.from_preset(preset)).train()
    model.loss_chunk_size = 40  # 3 x 50 = 150 tokens: 3 full chunks and a ragged one of 30
    ids = torch.randint(0, 2048, (3, 50))
    labels = ids.clone()
    labels[0, :7] = -100  # ignored targets (prompt masking)
    plain, g_plain = _loss_and_grads(model, ids, labels, return_logits=True)
    chunked, g_chunked = _loss_and_grads(model, ids, labels, return_logits=False)
    assert chunked.logits is None and plain.logits.shape == (3, 50, 2048)
    torch.testing.assert_close(chunked.loss, plain.loss, **FP32_TOL)
    assert g_chunked.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], **FP32_TOL, msg=name)
    # shift_labels (what PackedTokenDataset yields) takes the same path
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(model(input_ids=ids, shift_labels=shifted, return_logits=False).loss, plain.loss, **FP32_TOL)


def test_chunked_loss_falls_back_when_the_head_weight_is_partitioned():
    """DeepSpeed ZeRO-3 leaves an empty placeholder in lm_head.weight outside lm_head's forward (its
    hooks gather the real tensor): return_logits=False must then go through lm_head, not read .weight."""
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).train()
    ids = torch.randint(0, 2048, (2, 16))
    expected = model(input_ids=ids, labels=ids).loss

    class Partitioned(torch.nn.Module):  # what ZeRO-3 looks like from outside the module's forward
        def __init__(self, full: torch.Tensor):
            super().__init__()
            self.full, self.weight = full, torch.nn.Parameter(torch.empty(0))

        def forward(self, h):
            return h @ self.full.t()

    model.lm_head = Partitioned(model.lm_head.weight.detach())
    out = model(input_ids=ids, labels=ids, return_logits=False)
    torch.testing.assert_close(out.loss, expected, **FP32_TOL)
    assert out.logits is not None  # the full path ran


def test_chunked_loss_under_bf16_autocast_stays_at_bf16_rounding():
    """Both paths run the head matmuls in bf16: measured against an fp32 reference, the chunked
    gradients are as close as the plain path's (relative norm error < 2%, bf16 has 8 mantissa bits)."""
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).train()
    model.loss_chunk_size = 64
    ids = torch.randint(0, 2048, (2, 48))
    ref, g_ref = _loss_and_grads(model, ids, ids, return_logits=True)
    plain, g_plain = _loss_and_grads(model, ids, ids, return_logits=True, amp=True)
    chunked, g_chunked = _loss_and_grads(model, ids, ids, return_logits=False, amp=True)
    assert chunked.loss.dtype == torch.float32
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-3, rtol=0)
    for name in g_ref:
        err_plain = ((g_plain[name] - g_ref[name]).norm() / g_ref[name].norm()).item()
        err_chunked = ((g_chunked[name] - g_ref[name]).norm() / g_ref[name].norm()).item()
        assert err_chunked < max(0.02, 2 * err_plain), name


def test_linear_cross_entropy_edge_cases():
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    t = torch.randint(0, 30, (10,))
    # without grad (evaluation): the loss alone, still chunked
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, chunk_size=3), F.cross_entropy(h @ w.t(), t), **FP32_TOL)
    # every target ignored: NaN, as F.cross_entropy's mean over nothing
    ignored = torch.full((10,), -100)
    assert torch.isnan(linear_cross_entropy(h, w, ignored, chunk_size=4))
    assert torch.isnan(F.cross_entropy(h @ w.t(), ignored))
    # the gradient is scaled by the incoming gradient (here 3x)
    (3 * linear_cross_entropy(h, w, t, chunk_size=4)).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (3 * F.cross_entropy(h @ w.t(), t)).backward()
    torch.testing.assert_close(gh, h.grad, **FP32_TOL)
    torch.testing.assert_close(gw, w.grad, **FP32_TOL)
    # a second backward through the same graph would scale the stored gradients twice: refused
    loss = linear_cross_entropy(h, w, t, chunk_size=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match="must agree"):
        linear_cross_entropy(h, w, t[:5])


def test_no_graph_breaks_for_torch_compile():
    """torch.compile friendliness: dynamo traces the block and the whole training forward (chunked
    loss included) as one graph each. explain() only traces: no inductor compile, seconds on CPU."""
    from modeling.modeling_decoder import rope_cos_sin

    for preset in ("tiny-llama", "tiny-qwen3", "tiny-gpt2"):
        model = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="sdpa")).train()
        ids = torch.randint(0, 2048, (2, 32))
        x = torch.randn(2, 32, model.config.hidden_size)
        rope = None
        if model.config.position_embedding == "rope":
            rope = rope_cos_sin(torch.arange(32)[None], model.config.head_dim, model.config.rope_theta, x.dtype)
        block = torch._dynamo.explain(model.model.layers[0])(x, rope, None, None)
        full = torch._dynamo.explain(model)(input_ids=ids, labels=ids, return_logits=False)
        assert block.graph_break_count == 0, (preset, block.break_reasons)
        assert full.graph_break_count == 0, (preset, full.break_reasons)


def test_micro_batch_search_stops_at_oom_and_undoes_its_probe_steps(monkeypatch):
    """`--micro-batch auto` (CUDA) doubles until a step runs out of memory; the probes' optimizer steps
    must not leak into the timed run (every variant starts from the same weights) nor its peak memory."""
    src = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    runner = benchmark.build_runner(src, benchmark.Variant("ours", "sdpa", False, "chunked"), torch.device("cpu"),
                                    "fp32", "amp")
    before = {k: t.clone() for k, t in runner.model.state_dict().items()}
    real_step = runner.step

    def step(ids, eager=False):  # a device with room for 4 sequences: the real step, then OOM beyond
        real_step(ids, eager=eager)
        if ids.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.zeros(())

    monkeypatch.setattr(runner, "step", step)
    assert benchmark.find_max_micro_batch(runner, 16, 2048, torch.device("cpu"), seed=0, cap=64) == 4
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # four AdamW probe steps undone
    assert not runner.optimizer.state
    with pytest.raises(RuntimeError, match="boom"):  # anything but OOM is a real error, not a search result
        monkeypatch.setattr(runner, "step", lambda ids, eager=False: (_ for _ in ()).throw(RuntimeError("boom")))
        benchmark.find_max_micro_batch(runner, 16, 2048, torch.device("cpu"), seed=0, cap=64)
