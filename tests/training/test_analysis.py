"""training.analysis on synthetic run logs with known totals, written by the run log's own writer."""

import json
from pathlib import Path

import pytest

from training import run_log
from training.analysis import analyze, main, summarize


def _train(it, loss, time_ms, mfu=0.4, **extra):
    return {"type": "train", "iter": it, "loss": loss, "lr": 1e-4 * it, "grad_norm": 1.0 / it, "tokens": 1000 * it,
            "tokens_per_sec": 1000 / (time_ms / 1000), "tokens_per_sec_per_gpu": 500 / (time_ms / 1000),
            "mfu": mfu, "tflops": 100.0, "time_ms": time_ms, "mem_allocated_gb": 10.0 + it,
            "mem_peak_gb": 20.0 + it, "mem_reserved_gb": 30.0, **extra}


def _write(run_dir: Path, records: list, tail: str = "") -> Path:
    """The records through the trainer's writer (training/run_log.py), then `tail` as raw text: what a
    kill mid-write leaves."""
    writer = run_log.RunLogWriter(run_log.log_path(run_dir))
    writer.begin(start_iter=0)
    for record in records:
        writer.write(record)
    with open(writer.path, "a") as f:
        f.write(tail)
    return run_dir


@pytest.fixture
def cut_run(tmp_path):
    """Logged every iteration, killed during iteration 5 of 10 (its last line is cut short)."""
    records = [
        {"type": "config", "run_name": "cut", "max_iters": 10, "tokens_per_iter": 1000, "start_iter": 0},
        _train(1, 5.0, 100.0, mfu=0.3),
        _train(2, 4.0, 200.0, mfu=None),
        {"type": "eval", "iter": 2, "val_loss": 3.9, "time_ms": 50_000.0},  # evals are not training time
        _train(3, 3.5, 300.0, mfu=0.5),
        _train(4, 3.0, 400.0, mfu=0.4),
        {"type": "eval", "iter": 4, "val_loss": 3.2, "time_ms": 60_000.0},
        {"type": "checkpoint", "iter": 4, "path": "ckpt/iter_4", "time_ms": 30_000.0},
        {"type": "eval_harness", "iter": 4, "tasks": {"arc_easy": 0.31}},
    ]
    return _write(tmp_path / "cut", records, tail='\n{"type": "train", "iter": 5, "lo')


def test_totals_of_a_cut_run(cut_run):
    s = summarize(cut_run)
    assert s["skipped_lines"] == 2  # one empty line, one truncated line
    assert s["iters"] == 4 and s["last_iter"] == 4 and s["max_iters"] == 10
    assert s["train_time_s"] == pytest.approx(1.0)  # (100 + 200 + 300 + 400) ms, evals/checkpoint excluded
    assert s["time_per_iter_ms"] == pytest.approx(250.0)
    assert s["tokens"] == 4000 and s["tokens_per_sec"] == pytest.approx(4000.0)
    assert s["tokens_per_hour"] == pytest.approx(4000.0 * 3600)
    assert s["mfu_mean"] == pytest.approx(0.4) and s["mfu_median"] == pytest.approx(0.4)  # the null is skipped
    assert s["final_loss"] == 3.0 and s["final_val_loss"] == 3.2 and s["best_val_loss"] == 3.2
    assert s["peak_mem_gb"] == 24.0
    assert s["eval_time_s"] == pytest.approx(110.0) and s["checkpoint_time_s"] == pytest.approx(30.0)
    assert s["complete"] is False
    assert s["status"].startswith("cut off at iter 4 of 10 (40.0%)") and "2 unreadable" in s["status"]
    assert s["harness"] == {"arc_easy": 0.31}
    assert s["run"] == "cut"


def test_log_interval_and_resume(tmp_path):
    """A record every 5 iterations carries the per-iteration time of its 5-iteration window
    (training/callbacks.py), and a resume appends a config record with start_iter."""
    records = [
        {"type": "config", "max_iters": 20, "tokens_per_iter": 2048, "start_iter": 0},
        _train(5, 4.0, 100.0), _train(10, 3.5, 200.0),
        {"type": "config", "max_iters": 20, "tokens_per_iter": 2048, "start_iter": 10},
        _train(15, 3.2, 300.0), _train(20, 3.0, 400.0),
    ]
    s = summarize(_write(tmp_path / "resumed", records))
    assert s["train_time_s"] == pytest.approx(5 * (100 + 200 + 300 + 400) / 1000)
    assert s["iters"] == 20 and s["tokens"] == 20 * 2048
    assert s["tokens_per_sec"] == pytest.approx(20 * 2048 / 5.0)
    assert s["complete"] is True and s["status"] == "complete" and s["segments"] == 2


def test_garbage_only_log_does_not_crash(tmp_path):
    run = tmp_path / "junk"
    run.mkdir()
    (run / "log.jsonl").write_text("\n\nnot json\n[1, 2]\n{\"no_type\": 1}\n{\"type\": \"train\", \"it")
    log = run_log.read(run)
    records, skipped = log.records, len(log.skipped)
    assert records == [] and skipped == 6
    s = summarize(run)
    assert s["iters"] == 0 and s["train_time_s"] == 0 and s["tokens_per_sec"] is None and s["skipped_lines"] == 6


def test_analyze_writes_ranking_and_plots(cut_run, tmp_path):
    cpu = _write(tmp_path / "cpu", [
        {"type": "config", "run_name": "cpu", "max_iters": 2, "tokens_per_iter": 100},
        _train(1, 6.0, 1000.0, mfu=None), _train(2, 5.5, 1000.0, mfu=None),
    ])
    out = tmp_path / "report"
    result = analyze([cpu, cut_run], out)
    assert [s["run"] for s in result["runs"]] == ["cut", "cpu"]  # by val loss first, then train loss
    for name in ("summary.md", "summary.json", "loss.png", "lr.png", "tokens_per_sec.png", "mfu.png",
                 "memory.png", "grad_norm.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["runs"][0]["iters"] == 4
    assert "| rank |" in (out / "summary.md").read_text()
    # MFU all null (a CPU run alone): the plot is skipped, with the reason
    only_cpu = analyze([cpu], tmp_path / "cpu_report")
    assert "mfu" in only_cpu["plots"]["skipped"] and not (tmp_path / "cpu_report" / "mfu.png").exists()
    assert (cpu / "analysis").exists() is False  # --out given: nothing written next to the run


def test_cli(cut_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "log.jsonl" in capsys.readouterr().out
    assert main([str(cut_run)]) == 0
    out = capsys.readouterr().out
    assert "cut off at iter 4 of 10" in out and "plots: 6 written" in out
    assert (cut_run / "analysis" / "loss.png").exists()  # default --out: <first run>/analysis
    assert main([str(cut_run), "--no-plots", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["train_time_s"] == pytest.approx(1.0)
    assert main([str(tmp_path / "missing")]) == 2
    assert "no run log" in capsys.readouterr().err


def _config(name, tokens_per_iter, seqs, mem_kind="process_rss", **extra):
    return {"type": "config", "run_name": name, "max_iters": 40, "tokens_per_iter": tokens_per_iter,
            "global_batch_sequences": seqs, "seq_len": tokens_per_iter // seqs, "precision": "bf16", "world_size": 2,
            "device": "cpu", "distributed_type": "DEEPSPEED", "ds_stage": 1, "n_params": 360768,
            "model": {"preset": "tiny-llama", "hidden_size": 64}, "mem_kind": mem_kind, **extra}


def _cpu_train(it, tokens_per_iter):
    # a CPU record: RSS in mem_allocated_gb, peak RSS in mem_peak_gb, no reserved
    return {**_train(it, 5.0 - 0.01 * it, 100.0, mfu=None), "tokens": it * tokens_per_iter,
            "lr": 1e-5 * it**2, "mem_reserved_gb": None}  # spans more than a decade: log axis


def test_plots_title_the_run_config_put_tokens_on_x_and_label_memory_by_kind(tmp_path):
    from training.plots import build_figures

    small = [_config("small-batch", 1024, 4)] + [_cpu_train(i, 1024) for i in range(10, 41, 10)]
    small.append({"type": "eval", "iter": 20, "val_loss": 4.9})
    big = [_config("big-batch", 4096, 16)] + [_cpu_train(i, 4096) for i in range(10, 41, 10)]
    figures, skipped = build_figures([("small-batch", small), ("big-batch", big)])
    assert "mfu" in skipped and set(figures) == {"loss", "lr", "tokens_per_sec", "memory", "grad_norm"}

    ax = figures["loss"].axes[0]
    title = ax.get_title(loc="left")
    assert "small-batch: tiny-llama (361k params), global batch 4 x 256 = 1.02k tokens, bf16, 2 x cpu (DEEPSPEED ZeRO-1)" in title
    assert "big-batch: tiny-llama" in title and "global batch 16 x 256 = 4.1k tokens" in title
    assert ax.get_xlabel() == "tokens seen"  # two batch sizes: they compare by tokens, not iterations
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["small-batch"].get_xdata()) == [10240, 20480, 30720, 40960]
    assert list(lines["big-batch"].get_xdata()) == [40960, 81920, 122880, 163840]
    assert list(lines["small-batch: val_loss"].get_xdata()) == [20480]
    assert ax.get_xlim()[0] == 10240  # starts at the first logged point, no gap
    assert not ax.child_axes  # different batches: no shared iteration axis on top

    mem = figures["memory"].axes[0]
    assert mem.get_ylabel() == "GB, rank 0, process RSS (CPU)"
    labels = {ln.get_label() for ln in mem.get_lines()}
    assert {"small-batch: peak RSS (process)", "small-batch: RSS (process)"} <= labels
    assert not any("reserved" in label or "mem_" in label for label in labels)

    lr = figures["lr"].axes[0]
    assert lr.get_yscale() == "log"
    ticks = [t.get_text() for t in lr.get_yticklabels() if t.get_text()]
    assert ticks and all("10^" not in t and "mathdefault" not in t for t in ticks)  # plain numbers


def test_one_run_gets_iterations_on_the_top_axis_and_cuda_memory_labels(tmp_path):
    from training.plots import build_figures

    records = [_config("gpu", 2048, 8, mem_kind="cuda_allocator")] + [
        {**_train(max(i, 1), 4.0, 100.0), "iter": i, "tokens": i * 2048} for i in (0, 5, 10)]
    figures, _ = build_figures([("gpu", records)])
    loss = figures["loss"]
    ax = loss.axes[0]
    assert ax.get_xlim()[0] == 0  # iteration 0 logged: the plot starts there
    top = ax.child_axes  # the secondary x axis
    assert top and top[0].get_xlabel() == "iteration"
    assert figures["memory"].axes[0].get_ylabel() == "GB, rank 0, CUDA allocator"
    assert "gpu: reserved (CUDA allocator)" in {ln.get_label() for ln in figures["memory"].axes[0].get_lines()}


def test_logs_without_tokens_fall_back_to_iterations(tmp_path):
    from training.plots import build_figures

    records = [{"type": "config", "max_iters": 3}] + [
        {k: v for k, v in _train(i, 4.0, 100.0).items() if k != "tokens"} for i in (1, 2, 3)]
    figures, _ = build_figures([("old", records)])
    assert figures["loss"].axes[0].get_xlabel() == "iteration"
    assert figures["loss"].axes[0].get_title(loc="left").startswith("old")
