"""The GPU run, in one command: correctness on the device, then the training-step benchmark.

    bash benchmarks/gpu_check.sh                 # a CUDA machine: bf16, llama3-1.5b + qwen3-1.8b, <= 8 min
    bash benchmarks/gpu_check.sh --cpu --out DIR # the same on CPU with tiny presets (CI runs this)

Needs only torch, transformers and accelerate (no DeepSpeed, flash-attn, datasets, lm-eval, network):
the checks use `modeling` and the benchmark is `training.benchmark` (whose imports are torch,
transformers, modeling and training.{hardware,optim}); the JSON records any of those heavier packages
found in sys.modules at the end, and the run fails if there is one.

1. Checks (each a row: pass / fail / unavailable, with the numbers), in the run's dtype on its device:
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
2. Benchmark: `python -m training.benchmark` per preset (a subprocess with a deadline from the
   remaining budget, so the whole run stays within --budget-s): ours (chunked loss) and native, SDPA,
   compile on, bf16 autocast, seq 2048, the largest power-of-two micro-batch up to 8 that fits
   (searched per variant). Rows: tokens/s, TFLOP/s, MFU against training.hardware's dense peak, peak
   memory, host syncs per step, ours/native.

Output: <out>/<device>-<date>-check.json and .md (default out: benchmarks/results), rewritten after
each phase so an interrupted run leaves what it measured. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
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
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

T0 = time.perf_counter()  # the budget counts the imports too (torch + transformers: ~10-30 s on a cold disk)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling import DecoderConfig, DecoderForCausalLM, to_hf  # noqa: E402
from modeling.attention import (  # noqa: E402
    ATTENTION_FUNCTIONS, documents_from_position_ids, eager_attention, flash_attn_unavailable_reason,
)
from training.benchmark import DTYPES, device_info  # noqa: E402

HEAVY_MODULES = ("deepspeed", "datasets", "lm_eval", "data_prep", "eval")  # absent on the bare GPU machine
TINY = ("tiny-llama", "tiny-qwen3", "tiny-gpt2")
MODES = {
    "cuda": dict(presets=["llama3-1.5b", "qwen3-1.8b"], dtype="bf16", seq_len=2048, micro_batch="auto",
                 max_micro_batch=8, compile="on", warmup=3, iters=10, budget_s=480),
    "cpu": dict(presets=["tiny-llama", "tiny-qwen3"], dtype="fp32", seq_len=128, micro_batch="2",
                max_micro_batch=8, compile="off", warmup=1, iters=3, budget_s=300),
}
FLOOR = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 2e-3}  # absolute slack on top of 2x native's error


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def _row(check: str, name: str, status: str, **info) -> dict[str, Any]:
    return {"check": check, "name": name, "status": status, **info}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _backends(dtype: torch.dtype) -> list[str]:
    return ["eager", "sdpa"] + ([] if flash_attn_unavailable_reason(dtype) else ["flash_attention_2"])


def _cast(model, device, dtype):
    return model.to(device=device, dtype=dtype).eval()


def parity_checks(device: torch.device, dtype_name: str) -> list[dict]:
    """Ours vs native in the run's dtype, each measured against an fp32 reference of ours."""
    dtype, rows = DTYPES[dtype_name], []
    for preset in TINY:
        for attn in _backends(dtype):
            name = f"{preset}/{attn}"
            try:
                torch.manual_seed(0)
                src = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager")).eval()
                with torch.no_grad():  # perturb norms and biases: a swapped one must show
                    for n, p in src.named_parameters():
                        if "norm" in n or ".bias" in n:
                            p.add_(0.1 * torch.randn_like(p))
                ids = torch.randint(0, src.config.vocab_size, (2, 64)).to(device)
                with torch.no_grad():
                    ref = _cast(src, device, torch.float32)(input_ids=ids, labels=ids)
                ours = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager"))
                ours.load_state_dict(src.state_dict())
                ours.config._attn_implementation = attn  # read at every forward (as training.benchmark)
                native = to_hf(ours.cpu())
                ours, native = _cast(ours, device, dtype), _cast(native, device, dtype)
                if attn == "flash_attention_2":
                    native.set_attn_implementation("flash_attention_2")
                with torch.no_grad():
                    a = ours(input_ids=ids, labels=ids)
                    b = native(input_ids=ids, labels=ids, use_cache=False)
                err_ours, err_native = _max_diff(a.logits, ref.logits), _max_diff(b.logits, ref.logits)
                bound = 2 * err_native + FLOOR[dtype_name]
                loss_diff = abs(float(a.loss) - float(b.loss))
                loss_bound = 2 * abs(float(b.loss) - float(ref.loss)) + FLOOR[dtype_name]
                ok = err_ours <= bound and loss_diff <= loss_bound
                rows.append(_row("parity", name, "pass" if ok else "fail", native_class=type(native).__name__,
                                 ours_vs_fp32=err_ours, native_vs_fp32=err_native, bound=bound,
                                 ours_vs_native=_max_diff(a.logits, b.logits), loss_diff=loss_diff,
                                 loss_bound=loss_bound))
            except Exception as exc:  # noqa: BLE001 - a row per failure; the run goes on
                rows.append(_row("parity", name, "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
    return rows


def _sdpa_kernels(device: torch.device):
    """torch's default SDPA dispatch, then on CUDA each kernel forced alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"default": contextlib.nullcontext}
    if device.type == "cuda":
        forced = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
                  "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        kernels.update({k: (lambda b=b: sdpa_kernel([b])) for k, b in forced.items() if b is not None})
    return kernels


def _sdpa_ops(prof) -> list[str]:
    """The aten SDPA ops a profiled step ran: which kernel the default dispatch picked
    (_scaled_dot_product_flash_attention, _efficient_attention, _cudnn_attention, or the math ops)."""
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "scaled_dot_product" in n or "attention" in n.lower() and n.startswith("aten::"))


def sdpa_kernel_checks(device: torch.device, dtype_name: str, presets: list[str], seq_len: int) -> list[dict]:
    """Our SDPA attention on each kernel at each preset's attention shape: causal (the training fast
    path) and with a document mask (document_masking=True), forward + backward vs fp32 eager. Bound:
    2x the error of eager attention in the same dtype (the reference implementation) + a floor."""
    dtype, rows = DTYPES[dtype_name], []
    for preset in presets:
        cfg = DecoderConfig.from_preset(preset)
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, seq_len, h, hd, generator=g).to(device) for h in (nh, nkv, nkv))
        w = torch.randn(1, seq_len, nh, hd, generator=g).to(device)
        pos = torch.cat([torch.arange(n) for n in _doc_lengths(seq_len)])[None].to(device)
        for masking in (False, True):
            docs = documents_from_position_ids(pos, "sdpa") if masking else None
            ref_in = [t.float().requires_grad_() for t in (q, k, v)]
            ref = eager_attention(*ref_in, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs)
            ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
            low_in = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            low = eager_attention(*low_in, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs)
            low_err = _max_diff(low, ref)
            low_gerr = _grad_rel_err(torch.autograd.grad((low.float() * w).sum(), low_in), ref_grads)
            tol, gtol = 2 * low_err + FLOOR[dtype_name], 2 * low_gerr + FLOOR[dtype_name]
            for kernel, ctx in _sdpa_kernels(device).items():
                name = f"{preset} (nh={nh}, nkv={nkv}, hd={hd}, T={seq_len}){' documents' if masking else ' causal'}/{kernel}"
                inp = [t.to(dtype).requires_grad_() for t in (q, k, v)]
                with warnings.catch_warnings(record=True) as why:  # torch warns why a kernel was not used
                    warnings.simplefilter("always")
                    try:
                        with ctx(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                            out = ATTENTION_FUNCTIONS["sdpa"](*inp, causal=True, mask=None, dropout_p=0.0,
                                                              scale=hd**-0.5, documents=docs)
                            grads = torch.autograd.grad((out.float() * w).sum(), inp)
                    except RuntimeError as exc:  # this kernel does not take this shape / mask / GQA here
                        reasons = "; ".join(dict.fromkeys(str(x.message).splitlines()[0] for x in why))
                        rows.append(_row("sdpa-kernels", name, "unavailable",
                                         reason=(reasons or str(exc).splitlines()[0])[:400]))
                        continue
                timing = {}
                if kernel == "default":  # what masking costs the attention core: causal vs documents
                    timing["fwd_bwd_ms"] = _time_ms(device, lambda: torch.autograd.grad((ATTENTION_FUNCTIONS["sdpa"](
                        *inp, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs).float() * w).sum(), inp))
                err, gerr = _max_diff(out, ref), _grad_rel_err(grads, ref_grads)
                rows.append(_row("sdpa-kernels", name, "pass" if err <= tol and gerr <= gtol else "fail",
                                 out_vs_fp32=err, bound=tol, grad_rel_vs_fp32=gerr, grad_bound=gtol,
                                 ops=", ".join(_sdpa_ops(prof)), **timing))
    return rows


def _grad_rel_err(grads, ref_grads) -> float:
    """Largest |g - ref| over q, k, v, each relative to its reference's largest entry."""
    return max(_max_diff(a, b) / (float(b.abs().max()) + 1e-6) for a, b in zip(grads, ref_grads))


def _time_ms(device: torch.device, fn: Callable[[], Any], reps: int = 5) -> float:
    """Median milliseconds of fn after one warm-up call (CUDA events on a GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def _doc_lengths(T: int) -> list[int]:
    """A packed row of T tokens: a long document, short ones, a 1-token one, the rest."""
    lengths = [T // 2, T // 8, 1, T // 16]
    return lengths + [T - sum(lengths)]


def _count_syncs(device: torch.device, fn: Callable[[], Any]) -> Optional[int]:
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def document_checks(device: torch.device, dtype_name: str) -> list[dict]:
    """Packed row with document_masking == its documents alone, per backend, in the run's dtype
    (bound: 2x the error of running the documents alone in that dtype vs fp32, + floor)."""
    dtype, rows = DTYPES[dtype_name], []
    lengths = [[20, 7, 1, 36], [40, 24]]
    for preset in ("tiny-llama", "tiny-gpt2"):
        for attn in _backends(dtype):
            name = f"{preset}/{attn}"
            try:
                torch.manual_seed(0)
                src = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager")).eval()
                fp32 = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager"))
                fp32.load_state_dict(src.state_dict())
                cfg = src.config
                ids = torch.randint(0, cfg.vocab_size, (2, 64)).to(device)
                pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths]).to(device)
                model = _cast(src, device, dtype)
                model.config._attn_implementation = attn

                def alone(m):
                    with torch.no_grad():
                        return torch.stack([torch.cat([m(input_ids=d[None]).logits[0] for d in row.split(ls)])
                                            for row, ls in zip(ids, lengths)])

                with torch.no_grad():
                    packed = model(input_ids=ids, position_ids=pos, document_masking=True, use_cache=False).logits
                by_doc = alone(model)
                reference = alone(_cast(fp32, device, torch.float32))
                bound = 2 * _max_diff(by_doc, reference) + FLOOR[dtype_name]
                err = _max_diff(packed, reference)
                model.train()

                def step():
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        model(input_ids=ids, position_ids=pos, labels=ids, return_logits=False,
                              document_masking=True).loss.backward()

                step()  # warm-up: first-call work (library handles, allocator growth) is not the step's
                syncs = _count_syncs(device, step)
                # CUDA: the mask is built on the device (0 syncs); flash's varlen offsets cost one
                syncs_ok = syncs is None or syncs <= (1 if attn == "flash_attention_2" else 0)
                rows.append(_row("document-masking", name, "pass" if err <= bound and syncs_ok else "fail",
                                 packed_vs_fp32=err, bound=bound, host_syncs_fwd_bwd=syncs))
            except Exception as exc:  # noqa: BLE001
                rows.append(_row("document-masking", name, "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
    return rows


# ----------------------------------------------------------------------------------------------
# Benchmark: training.benchmark per preset, under a deadline
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
    entry: dict[str, Any] = {"preset": preset, "command": "python -m training.benchmark " + " ".join(argv)}
    if timeout_s < 30:
        return {**entry, "status": "skipped", "reason": f"time budget spent ({timeout_s:.0f} s left)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "training.benchmark", *argv, "--json", str(out), "-q"]
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
def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def to_markdown(doc: dict[str, Any]) -> str:
    d, env = doc["device"], doc["environment"]
    lines = [f"# GPU check: {d['label']} ({d['name']}), {doc['created_utc']}", "",
             f"`{doc['command']}`  ",
             f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, accelerate "
             f"{env['accelerate']}; flash_attn: {env['flash_attn']}  ",
             f"dtype {doc['settings']['dtype']}; wall {doc['wall_s']:.0f} s of a {doc['settings']['budget_s']} s budget; "
             f"checks: {doc['summary']['passed']} pass, {doc['summary']['failed']} fail, "
             f"{doc['summary']['unavailable']} unavailable; heavy modules loaded: {doc['heavy_modules_loaded'] or 'none'}",
             "", "## Checks", "", "| check | case | status | numbers |", "|---|---|---|---|"]
    for r in doc["checks"]:
        nums = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                         if k not in ("check", "name", "status"))
        lines.append(f"| {r['check']} | {r['name']} | {r['status']} | {nums} |")
    s = doc["settings"]
    lines += ["", f"## Training step: ours (chunked loss) vs native, SDPA, compile {s['compile']}, {s['dtype']}, "
              f"seq {s['seq_len']}, micro-batch {s['micro_batch']} (max {s['max_micro_batch']})", "",
              "| preset | variant | status | mb | tokens/s | TFLOP/s | MFU | peak mem GB | host syncs/step "
              "| ours/native | first loss |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in doc["benchmarks"]:
        if b["status"] != "ok":
            lines.append(f"| {b['preset']} | | {b['status']}: {b['reason'][:200]} | | | | | | | | |")
            continue
        for r in b["rows"]:
            mfu = None if r["mfu"] is None else 100 * r["mfu"]
            lines.append(f"| {b['preset']} | {r['label']} | {r['status']}{': ' + r['reason'] if r['reason'] else ''} "
                         f"| {_f(r['micro_batch'], 'd')} | {_f(r['tokens_per_sec'], ',.0f')} | {_f(r['tflops'], '.1f')} "
                         f"| {_f(mfu, '.1f')}{'%' if mfu is not None else ''} | {_f(r['peak_memory_gb'], '.2f')} "
                         f"| {_f(r['host_syncs_per_step'], 'd')} | {_f(r['ratio_tokens_per_sec_vs_native'], '.3f')} "
                         f"| {_f(r['loss_first_step'], '.4f')} |")
    peak = d.get("peak_flops")
    lines += ["", f"MFU against {peak / 1e12:.1f} TFLOP/s ({d['peak_dtype']} dense peak, training/hardware.py)."
              if peak else "MFU: null (no dense peak for this device).",
              "Each benchmark row re-runs with its `command` (add `--json FILE`)."]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: Path, t0: float) -> tuple[Path, Path]:
    stem = f"{doc['device']['label']}-{doc['created_utc'][:10]}-check"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    doc["wall_s"] = time.perf_counter() - t0
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    md_path.write_text(to_markdown(doc))
    return json_path, md_path


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
    p.add_argument("--dtype", choices=tuple(DTYPES), help="checks and benchmark dtype (default: bf16 on CUDA, fp32 on CPU)")
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
    flash_why = flash_attn_unavailable_reason(DTYPES[mode["dtype"]])
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
            doc["checks"].append(_row(phase, "(phase)", "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
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
    doc["heavy_modules_loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_MODULES))
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
