"""The helpers every benchmark shares: timing (timed calls, interleaving, the trainer's phase ranges),
out-of-memory detection, and the report (markdown table, atomic JSON, '-' for stdout)."""

import json

import pytest
import torch

from benchmarks import memory, report, timing
from training import trainer


def test_time_calls_and_interleaving_count_and_order():
    seen = []
    times = timing.time_calls(lambda: seen.append("x"), 3, "cpu", warmup=2)
    assert len(times) == 3 and len(seen) == 5 and all(t >= 0 for t in times)
    order = []
    out = timing.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3,
                                  warmup_rounds=1, setup=lambda: order.append("-"))
    assert order == ["-", "a", "-", "b", "-", "b", "-", "a", "-", "a", "-", "b", "-", "b", "-", "a"]
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3}  # the warm-up round is dropped
    assert timing.count_host_syncs(lambda: None, "cpu") is None  # counted on CUDA only
    with timing.Stopwatch() as sw:
        sum(i * i for i in range(200_000))
    assert sw.wall_s > 0 and sw.cpu_s >= 0


def test_phase_timer_times_the_trainers_ranges_only_while_installed():
    timer = timing.PhaseTimer("cpu")
    with timer.installed():
        with trainer.nvtx("forward"):
            pass
        with trainer.nvtx("forward"):
            pass
        with trainer.nvtx("backward"):
            pass
    with trainer.nvtx("forward"):  # uninstalled: a plain (null or NVTX) range again
        pass
    spent = timer.take()
    assert set(spent) == {"forward", "backward"} and all(v >= 0 for v in spent.values())
    assert timer.take() == {} and getattr(trainer.nvtx, "recorder", None) is None
    host = timing.PhaseTimer()  # no device, no range: host seconds around any call
    with host("part"):
        pass
    assert set(host.take()) == {"part"}
    with timing.Stopwatch(device="cpu") as sw:
        sum(i * i for i in range(10_000))
    assert sw.wall_s > 0


@pytest.mark.parametrize("exc, oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("shape mismatch"), False),
    (ValueError("boom"), False),
])
def test_is_oom(exc, oom):
    assert memory.is_oom(exc) is oom


def test_markdown_table_and_json(tmp_path, capsys):
    """Committed results are unpadded markdown (training.tables.format_table, the one printer)."""
    md = report.format_table(("name", "n"), [["a", 1], ["b", ""]], markdown=True, align="lr", padded=False)
    assert md.splitlines() == ["| name | n |", "|---|---:|", "| a | 1 |", "| b | |"]
    with pytest.raises(ValueError, match="align"):
        report.format_table(("a", "b"), [], markdown=True, align="l", padded=False)
    target = tmp_path / "sub" / "r.json"
    report.write_json({"x": 1, "p": tmp_path}, target)
    assert json.loads(target.read_text()) == {"x": 1, "p": str(tmp_path)}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temporary file left behind
    report.write_json({"y": 2}, "-")
    assert json.loads(capsys.readouterr().out) == {"y": 2}
    report.write_json({"z": 3}, None)  # no --json: nothing written or printed
    assert capsys.readouterr().out == ""


def test_table_alignment_is_asked_for_or_guessed():
    rows = [["a", "1.5"], ["bb", "n/a"]]
    guessed = report.format_table(("name", "x"), rows)
    assert guessed.splitlines()[2:] == ["a     1.5", "bb    n/a"]  # numbers (and n/a) right-aligned
    asked = report.format_table(("name", "x"), rows, align="rl")
    assert asked.splitlines()[2:] == ["   a  1.5", "  bb  n/a"]
    assert report.format_table(("name", "x"), rows, markdown=True, align="ll").splitlines()[1] == "|------|-----|"
    assert report.format_table(("name", "x"), rows, markdown=True, padded=False).splitlines()[1] == "|---|---:|"
    with pytest.raises(ValueError, match="markdown"):
        report.format_table(("name", "x"), rows, padded=False)
    with pytest.raises(ValueError, match="align"):
        report.format_table(("name", "x"), rows, align="lc")
