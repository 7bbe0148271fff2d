"""The command-line tools: --help, an end-to-end run, the benchmark's JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("module,expect", [
    ("data_prep.tokenizer", "train"),
    ("data_prep.prepare", "--val-fraction"),
    ("benchmarks.data_bench", "--json"),
])
def test_help(module: str, expect: str) -> None:
    res = run(module, "--help")
    assert res.returncode == 0, res.stderr
    assert expect in res.stdout and "usage: python -m " + module in res.stdout


def test_end_to_end_cli(tmp_path: Path, small_corpus: Path, capsys) -> None:
    from data_prep import tokenizer

    # The tokenizer CLI in-process (its main() is the console entry), prepare as a real process.
    assert tokenizer.main(["train", "--input", str(small_corpus), "--vocab-size", "512", "--out",
                           str(tmp_path / "tok"), "--no-progress", "--json", str(tmp_path / "tok.json")]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 512
    assert json.loads((tmp_path / "tok.json").read_text())["eos_token"] == "<|endoftext|>"

    prep = run("data_prep.prepare", "--input", str(small_corpus), "--tokenizer", str(tmp_path / "tok"),
               "--out", str(tmp_path / "data"), "--seq-len", "64", "--val-fraction", "0.05",
               "--no-progress")
    assert prep.returncode == 0, prep.stderr
    assert "train" in prep.stdout and "val" in prep.stdout and "tokens/s" in prep.stdout

    from data_prep import PackedTokenDataset, build_dataloader, check_vocab_compat, load_manifest

    m = load_manifest(tmp_path / "data")
    check_vocab_compat(m, 512)
    x, y = next(iter(build_dataloader(PackedTokenDataset(tmp_path / "data", 64), 2)))
    assert x.shape == (2, 64) and int(x.max()) < 512


def test_bad_input_exits_with_message(tmp_path: Path) -> None:
    res = run("data_prep.prepare", "--input", str(tmp_path / "missing.txt"), "--tokenizer", "x",
              "--out", str(tmp_path / "o"), "--seq-len", "8")
    assert res.returncode == 2
    assert "error: " in res.stderr and "Traceback" not in res.stderr


def test_bench_writes_json(tmp_path: Path, small_corpus: Path, tokenizer_dir: Path, capsys) -> None:
    from data_prep import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--corpus", str(small_corpus), "--tokenizer", str(tokenizer_dir),
                       "--repeats", "1", "--workers", "1", "--tasks", "2", "--loader-batches", "20",
                       "--num-workers", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    [p] = result["prepare"]
    assert p["raw_tokens_per_cpu_s"] > 0 and p["modes"][0]["tokens_per_cpu_s"] > 0
    assert p["modes"][0]["task_tokens_per_cpu_s"] >= p["modes"][0]["tokens_per_cpu_s"]
    [ex] = result["extrapolation"]
    rate = p["modes"][0]["task_tokens_per_cpu_s"]
    # the bench rounds hours to 2 decimals: on a fast run they are small, so allow that rounding too
    assert ex["hours_one_node"] == pytest.approx(117e9 / (rate * 64) / 3600, rel=0.01, abs=0.006)
    assert ex["hours_n_nodes"] == pytest.approx(ex["hours_one_node"] / 8, rel=0.01, abs=0.006)
    assert result["loader"][0]["batches_per_s"] > 0, result.get("loader_error")
    table = capsys.readouterr().out
    assert "raw encode_batch_fast" in table and "batches/s" in table and "one 64-core node" in table
