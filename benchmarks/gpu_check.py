"""The GPU run, in one command: correctness on the device, then the training-step benchmark.

    bash benchmarks/gpu_check.sh                 # a CUDA machine: bf16, llama3-1.5b + qwen3-1.8b, <= 8 min
    bash benchmarks/gpu_check.sh --cpu --out DIR # the same on CPU with tiny presets (CI runs this)

Needs only torch, transformers and accelerate (no DeepSpeed, flash-attn, datasets, lm-eval, network):
the checks use `modeling` and the benchmark is `benchmarks.step` (whose imports are torch, transformers,
accelerate, modeling and training's trainer); the JSON records any of those heavier packages found in
sys.modules at the end, and the run fails if there is one.

1. Checks (benchmarks/device_checks.py; each a row: pass / fail / unavailable, with the numbers), in the
   run's dtype on its device:
   * parity: ours vs the native transformers model (modeling.to_hf, same weights) for the tiny
     LLaMA / Qwen3 / GPT-2 presets and every attention backend that runs here (eager, sdpa;
     flash_attention_2 when flash_attn imports): logits and loss. In bf16 both sides round, so the
     test is against an fp32 reference: ours may be at most 2x (+ a small floor) further from it
     than native is.
   * sdpa-kernels: our SDPA attention forced onto each of torch's kernels (flash, cuDNN, memory-
     efficient, math) at the attention shape of each benchmarked preset (causal GQA, and with a
     document mask), forward + backward against fp32 eager. A kernel that refuses the shape is
     "unavailable" with torch's reason: that tells which kernel training actually gets.
   * document-masking: a packed row with document masking equals its documents run alone, per
     backend, and the host syncs of one masked forward + backward (CUDA; 0 expected for eager/sdpa,
     1 for flash_attention_2's varlen offsets).
2. Benchmark: `python -m benchmarks.step` per preset (a subprocess with a deadline from the
   remaining budget, so the whole run stays within --budget-s): ours (chunked loss) and native, SDPA,
   compile on, bf16 autocast, seq 2048, the largest power-of-two micro-batch up to 8 that fits
   (searched per variant). Rows: tokens/s, TFLOP/s, MFU against training.hardware's dense peak, peak
   memory, host syncs per step, ours/native.

Output: <out>/<device>-<date>-check.json and .md (default out: benchmarks/results), rewritten after
each phase so an interrupted run leaves what it measured. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

T0 = time.perf_counter()  # the budget counts the imports too (torch + transformers: ~10-30 s on a cold disk)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling.attention import flash_attn_unavailable_reason  # noqa: E402
from benchmarks.device_checks import check_row, document_checks, parity_checks, sdpa_kernel_checks  # noqa: E402
from benchmarks.report import fmt, format_table, write_json, write_text  # noqa: E402
from benchmarks.step_report import device_info  # noqa: E402
from training.precision import PRECISION_NAMES, torch_dtype  # noqa: E402

HEAVY_MODULES = ("deepspeed", "datasets", "lm_eval", "data_prep", "eval")  # absent on the bare GPU machine
# standard library only, loaded by the report's atomic writes: not what HEAVY_MODULES guards against
LIGHT_SUBMODULES = ("data_prep", "data_prep.atomic")
MODES = {
    "cuda": dict(presets=["llama3-1.5b", "qwen3-1.8b"], dtype="bf16", seq_len=2048, micro_batch="auto",
                 max_micro_batch=8, compile="on", warmup=3, iters=10, budget_s=480),
    "cpu": dict(presets=["tiny-llama", "tiny-qwen3"], dtype="fp32", seq_len=128, micro_batch="2",
                max_micro_batch=8, compile="off", warmup=1, iters=3, budget_s=300),
}


# ----------------------------------------------------------------------------------------------
# Benchmark: benchmarks.step per preset, under a deadline
# ----------------------------------------------------------------------------------------------
BENCH_KEYS = ("label", "status", "reason", "micro_batch", "tokens_per_sec", "tflops", "mfu", "peak_memory_gb",
              "host_syncs_per_step", "loss_first_step", "ratio_tokens_per_sec_vs_native", "warmup_s")


def benchmark_argv(preset: str, mode: dict, device: str) -> list[str]:
    return ["--preset", preset, "--device", device, "--dtype", mode["dtype"], "--seq-len", str(mode["seq_len"]),
            "--micro-batch", str(mode["micro_batch"]), "--max-micro-batch", str(mode["max_micro_batch"]),
            "--attn", "sdpa", "--compile", mode["compile"], "--loss", "chunked",
            "--warmup", str(mode["warmup"]), "--iters", str(mode["iters"])]


def run_benchmark(preset: str, mode: dict, device: str, timeout_s: float) -> dict[str, Any]:
    argv = benchmark_argv(preset, mode, device)
    entry: dict[str, Any] = {"preset": preset, "command": "python -m benchmarks.step " + " ".join(argv)}
    if timeout_s < 30:
        return {**entry, "status": "skipped", "reason": f"time budget spent ({timeout_s:.0f} s left)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "benchmarks.step", *argv, "--json", str(out), "-q"]
        start = time.perf_counter()
        # its own process group: a deadline also ends inductor's compile workers
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {**entry, "status": "timeout", "reason": f"no result within {timeout_s:.0f} s", "wall_s": timeout_s}
        entry["wall_s"] = time.perf_counter() - start
        if proc.returncode != 0 or not out.is_file():
            return {**entry, "status": "error", "reason": (stderr or stdout)[-1500:]}
        result = json.loads(out.read_text())
    rows = [{k: r.get(k) for k in BENCH_KEYS} for r in result["rows"]]
    return {**entry, "status": "ok", "device": result["device"], "settings": result["settings"],
            "model": result["model"], "rows": rows, "summary": result["summary"], "result": result}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
CHECK_HEADERS = ("check", "case", "status", "numbers")
BENCH_HEADERS = ("preset", "variant", "status", "mb", "tokens/s", "TFLOP/s", "MFU", "peak mem GB", "host syncs/step",
                 "ours/native", "first loss")


def _bench_cells(b: dict[str, Any]) -> list[list[Any]]:
    if b["status"] != "ok":
        return [[b["preset"], "", f"{b['status']}: {b['reason'][:200]}"] + [""] * 8]
    rows = []
    for r in b["rows"]:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        rows.append([b["preset"], r["label"], f"{r['status']}{': ' + r['reason'] if r['reason'] else ''}",
                     fmt(r["micro_batch"], "d"), fmt(r["tokens_per_sec"], ",.0f"), fmt(r["tflops"], ".1f"),
                     f"{fmt(mfu, '.1f')}{'%' if mfu is not None else ''}", fmt(r["peak_memory_gb"], ".2f"),
                     fmt(r["host_syncs_per_step"], "d"), fmt(r["ratio_tokens_per_sec_vs_native"], ".3f"),
                     fmt(r["loss_first_step"], ".4f")])
    return rows


def to_markdown(doc: dict[str, Any]) -> str:
    d, env = doc["device"], doc["environment"]
    checks = [[r["check"], r["name"], r["status"],
               ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                         if k not in ("check", "name", "status"))] for r in doc["checks"]]
    s = doc["settings"]
    lines = [f"# GPU check: {d['label']} ({d['name']}), {doc['created_utc']}", "",
             f"`{doc['command']}`  ",
             f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, accelerate "
             f"{env['accelerate']}; flash_attn: {env['flash_attn']}  ",
             f"dtype {doc['settings']['dtype']}; wall {doc['wall_s']:.0f} s of a {doc['settings']['budget_s']} s budget; "
             f"checks: {doc['summary']['passed']} pass, {doc['summary']['failed']} fail, "
             f"{doc['summary']['unavailable']} unavailable; heavy modules loaded: {doc['heavy_modules_loaded'] or 'none'}",
             "", "## Checks", "", format_table(CHECK_HEADERS, checks, markdown=True, align="llll", padded=False),
             "", f"## Training step: ours (chunked loss) vs native, SDPA, compile {s['compile']}, {s['dtype']}, "
             f"seq {s['seq_len']}, micro-batch {s['micro_batch']} (max {s['max_micro_batch']})", "",
             format_table(BENCH_HEADERS, [c for b in doc["benchmarks"] for c in _bench_cells(b)], markdown=True,
                          align="lllrrrrrrrr", padded=False)]
    peak = d.get("peak_flops")
    lines += ["", f"MFU against {peak / 1e12:.1f} TFLOP/s ({d['peak_dtype']} dense peak, training/hardware.py)."
              if peak else "MFU: null (no dense peak for this device).",
              "Each benchmark row re-runs with its `command` (add `--json FILE`)."]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: Path, t0: float) -> tuple[Path, Path]:
    """The JSON and the markdown, each written atomically: an interrupted run leaves whole files."""
    stem = f"{doc['device']['label']}-{doc['created_utc'][:10]}-check"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    doc["wall_s"] = time.perf_counter() - t0
    write_json(doc, json_path)
    write_text(md_path, to_markdown(doc))
    return json_path, md_path


def heavy_modules_loaded() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules if m not in LIGHT_SUBMODULES} & set(HEAVY_MODULES))


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bash benchmarks/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on CPU with the tiny presets (what CI runs)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="directory of the json/md")
    p.add_argument("--budget-s", type=float, help="wall-clock budget; benchmarks get what the checks leave "
                   "(default 480 on CUDA, 300 on CPU)")
    p.add_argument("--dtype", choices=PRECISION_NAMES, help="checks and benchmark dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--presets", help="comma-separated benchmark presets (default: llama3-1.5b,qwen3-1.8b on CUDA, "
                   "tiny-llama,tiny-qwen3 on CPU)")
    args = p.parse_args(argv)
    t0 = T0
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine, or pass --cpu for the CPU/CI variant")
    kind = "cpu" if args.cpu else "cuda"
    mode = dict(MODES[kind])
    if args.budget_s:
        mode["budget_s"] = args.budget_s
    if args.dtype:
        mode["dtype"] = args.dtype
    if args.presets:
        mode["presets"] = [s.strip() for s in args.presets.split(",") if s.strip()]
    device = torch.device(kind)
    flash_why = flash_attn_unavailable_reason(torch_dtype(mode["dtype"]))
    doc: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.sh", "schema_version": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bash benchmarks/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
        "device": device_info(device, mode["dtype"]),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                        "transformers": _version("transformers"), "accelerate": _version("accelerate"),
                        "flash_attn": "available" if flash_why is None else f"not used: {flash_why}",
                        "installed": {m: importlib.util.find_spec(m) is not None
                                      for m in ("deepspeed", "datasets", "lm_eval", "flash_attn")}},
        "settings": mode, "checks": [], "benchmarks": [], "phases_s": {}, "heavy_modules_loaded": [],
    }
    out_dir = Path(args.out)
    doc["summary"] = {"passed": 0, "failed": 0, "unavailable": 0}
    for phase, fn in (("parity", lambda: parity_checks(device, mode["dtype"])),
                      ("sdpa-kernels", lambda: sdpa_kernel_checks(device, mode["dtype"], mode["presets"], mode["seq_len"])),
                      ("document-masking", lambda: document_checks(device, mode["dtype"]))):
        start = time.perf_counter()
        print(f"[gpu_check] {phase} ...", file=sys.stderr, flush=True)
        try:
            doc["checks"] += fn()
        except Exception as exc:  # noqa: BLE001 - one failed phase must not cost the benchmark
            doc["checks"].append(check_row(phase, "(phase)", "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
        doc["phases_s"][phase] = time.perf_counter() - start
        _summarize(doc)
        write(doc, out_dir, t0)
    gc.collect()
    if device.type == "cuda":  # hand the cached blocks back: each benchmark runs in its own process
        torch.cuda.empty_cache()
    for i, preset in enumerate(mode["presets"]):
        left = mode["budget_s"] - (time.perf_counter() - t0) - 10  # 10 s to write the report
        print(f"[gpu_check] benchmark {preset} (deadline {left / (len(mode['presets']) - i):.0f} s) ...",
              file=sys.stderr, flush=True)
        doc["benchmarks"].append(run_benchmark(preset, mode, kind, left / (len(mode["presets"]) - i)))
        write(doc, out_dir, t0)
    doc["heavy_modules_loaded"] = heavy_modules_loaded()
    _summarize(doc)
    json_path, md_path = write(doc, out_dir, t0)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0 if doc["summary"]["ok"] else 1


def _summarize(doc: dict[str, Any]) -> None:
    s = doc["summary"]
    for status, key in (("pass", "passed"), ("fail", "failed"), ("unavailable", "unavailable")):
        s[key] = sum(r["status"] == status for r in doc["checks"])
    s["benchmarks_ok"] = [b["preset"] for b in doc["benchmarks"] if b["status"] == "ok"]
    s["ok"] = s["failed"] == 0 and not doc["heavy_modules_loaded"] and all(
        b["status"] == "ok" for b in doc["benchmarks"])


if __name__ == "__main__":
    sys.exit(main())
