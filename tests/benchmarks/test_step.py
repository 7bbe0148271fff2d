"""benchmarks.step (the training-step benchmark): the throughput/MFU arithmetic by hand, the JSON it
writes, a real tiny CPU run against the native model through the trainer's own step, and the
micro-batch search."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import step as benchmark
from benchmarks import step_report, step_runner, step_session, timing
from benchmarks.memory import PeakTensorBytes
from modeling import DecoderConfig, DecoderForCausalLM, flops_per_token

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
    m = step_report.throughput_metrics(times, 1024, fpt, peak_flops_per_sec=1e12)
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
    assert step_report.throughput_metrics([step], tokens_per_step, fpt_big, 989.4e12)["mfu"] == pytest.approx(0.5)
    assert step_report.throughput_metrics(times, 1024, fpt, None)["mfu"] is None  # CPU: no peak, no MFU


def test_percentile_rounds_and_geomean():
    assert timing.percentile([1.0], 90) == 1.0
    assert timing.percentile([1, 2, 3, 4], 50) == 2.5
    assert timing.split_rounds(10, 4) == [3, 3, 2, 2]
    assert timing.split_rounds(3, 4) == [1, 1, 1]  # never more steps than asked
    assert timing.geomean([0.5, 2.0]) == pytest.approx(1.0)


def test_ratios_pair_ours_with_native_of_the_same_backend_and_compile():
    variants = step_session.plan_variants(["eager", "sdpa"], [False], ["chunked", "full"], native=True)
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
    step_report.add_ratios(rows, variants)
    assert rows["ours/eager/compile-off/chunked"]["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.5)
    assert rows["ours/sdpa/compile-off/chunked"]["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.25)
    assert rows["ours/sdpa/compile-off/full"]["ratio_tokens_per_sec_vs_native"] is None
    assert rows["native/sdpa/compile-off/full"]["ratio_tokens_per_sec_vs_native"] is None
    summary = step_report.summarize(list(rows.values()))
    assert summary["ratio_tokens_per_sec_vs_native"] == pytest.approx(1.25)  # the worst configuration
    assert summary["ratio_tokens_per_sec_vs_native_max"] == pytest.approx(1.5)
    assert summary["ratio_tokens_per_sec_vs_native_geomean"] == pytest.approx((1.5 * 1.5 * 1.25) ** (1 / 3))
    assert summary["skipped"] == {"ours/sdpa/compile-off/full": "boom"}


def test_cpu_peak_tensor_bytes_by_hand():
    a = torch.zeros(1000)  # 4000 bytes, alive before: the baseline
    with PeakTensorBytes([a]) as tracker:
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
    cmd = [sys.executable, "-m", "benchmarks.step", "--preset", "tiny-llama", "--device", "cpu",
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
    md = step_report.to_markdown(result)
    assert sum(line.startswith("|") for line in md.splitlines()) == 2 + len(result["rows"])  # header, rule, rows
    json_path, md_path = step_report.default_paths(result, "tiny-llama")
    assert json_path.parent == REPO / "benchmarks" / "results"
    assert json_path.name == f"cpu-{result['created_utc'][:10]}-tiny-llama.json" and md_path.suffix == ".md"
    assert step_report.default_paths(result, None)[0].name == f"cpu-{result['created_utc'][:10]}.json"


def test_micro_batch_search_stops_at_oom_and_undoes_its_probe_steps(monkeypatch):
    """`--micro-batch auto` (CUDA) doubles until a step runs out of memory; the probes' optimizer steps
    must not leak into the timed run (every variant starts from the same weights) nor its peak memory."""
    src = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    runner = step_runner.build_runner(src, step_runner.Variant("ours", "sdpa", False, "chunked"), torch.device("cpu"),
                                    "fp32", "amp")
    before = {k: t.clone() for k, t in runner.model.state_dict().items()}
    real_step = runner.step

    def step(ids, eager=False):  # a device with room for 4 sequences: the real step, then OOM beyond
        real_step(ids, eager=eager)
        if ids.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.zeros(())

    monkeypatch.setattr(runner, "step", step)
    assert step_runner.find_max_micro_batch(runner, 16, 2048, torch.device("cpu"), seed=0, cap=64) == 4
    after = runner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # four AdamW probe steps undone
    assert not runner.optimizer.state
    with pytest.raises(RuntimeError, match="boom"):  # anything but OOM is a real error, not a search result
        monkeypatch.setattr(runner, "step", lambda ids, eager=False: (_ for _ in ()).throw(RuntimeError("boom")))
        step_runner.find_max_micro_batch(runner, 16, 2048, torch.device("cpu"), seed=0, cap=64)


def test_a_step_is_the_trainers_train_step(monkeypatch):
    """What is timed is what is trained: every runner step is one Trainer.train_step, and the first one's loss
    is the plain forward loss of the source weights on that batch (labels = the batch, shifted inside)."""
    from training.trainer import Trainer

    calls = []
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self: calls.append(self) or real(self))
    src = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    ids = torch.randint(0, 2048, (2, 16))
    with torch.no_grad():
        expected = float(src(input_ids=ids, labels=ids).loss)
    for variant in (step_runner.Variant("ours", "sdpa", False, "chunked"), step_runner.Variant("ours", "sdpa", False, "full"),
                    step_runner.Variant("native", "sdpa", False, "full")):
        calls.clear()
        runner = step_runner.build_runner(src, variant, torch.device("cpu"), "fp32", "amp")
        first = runner.step(ids)
        runner.step(ids)
        assert len(calls) == 2 and all(isinstance(t, Trainer) for t in calls), variant.label
        assert float(first) == pytest.approx(expected, abs=1e-5), variant.label
    with pytest.raises(SystemExit, match="fp16"):  # accelerate would silently compute an fp16 CPU step in fp32
        benchmark.resolve_args(benchmark.build_parser().parse_args(["--device", "cpu", "--dtype", "fp16"]))


@pytest.mark.parametrize("old, new", [("training.benchmark", "benchmarks.step"), ("training.sweep", "benchmarks.sweep")])
def test_old_entry_points_run_the_new_tools(old, new):
    """`python -m training.benchmark` / `training.sweep` stay for one release: the same tool, nothing extra printed."""
    env = {**__import__("os").environ, "COLUMNS": "100"}
    runs = [subprocess.run([sys.executable, "-m", m, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120) for m in (old, new)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout and f"usage: python -m {new}" in runs[0].stdout


def test_compile_on_is_trainings_per_block_compile_and_eager_steps_do_not_compile(monkeypatch):
    """`--compile on` prepares the model with training.run.prepare_for_training (every decoder block compiled in
    place; native: its decoder layers the same way), one module, no whole-model torch.compile wrapper; an
    eager step (the micro-batch search) runs those blocks without compiling and computes the plain loss."""
    from torch._dynamo.eval_frame import OptimizedModule

    from benchmarks import trainer_step
    from training import run

    seen = []
    monkeypatch.setattr(trainer_step, "prepare_for_training",
                        lambda model, cfg: seen.append(cfg) or run.prepare_for_training(model, cfg))
    src = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    ids = torch.randint(0, 2048, (2, 16))
    with torch.no_grad():
        expected = float(src(input_ids=ids, labels=ids).loss)
    for impl, loss in (("ours", "chunked"), ("native", "full")):
        runner = step_runner.build_runner(src, step_runner.Variant(impl, "sdpa", True, loss), torch.device("cpu"),
                                          "fp32", "amp")
        blocks = runner.model.model.layers
        assert all(b._compiled_call_impl is not None for b in blocks), impl  # nn.Module.compile(), in place
        assert not any(isinstance(m, OptimizedModule) for m in runner.steps.trainer.model.modules()), impl
        assert runner.steps.trainer.model.inner is runner.model  # the one module the optimizer updates
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        first = runner.step(ids, eager=True)
        assert not torch._dynamo.utils.counters["stats"]["calls_captured"], impl  # nothing was compiled
        assert float(first) == pytest.approx(expected, abs=1e-5), impl
    assert [(c.compile, c.activation_checkpointing) for c in seen] == [(True, False)]  # ours; native has its layers
