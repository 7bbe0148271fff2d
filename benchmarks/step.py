"""Training-step throughput of our decoder against the native transformers model with the same weights.

    python -m benchmarks.step --preset tiny-llama --device cpu --json out.json
    python -m benchmarks.step --preset tiny-llama --set hidden_size=256 num_hidden_layers=4 vocab_size=32000
    python -m benchmarks.step --preset llama3-1.5b --device cuda --dtype bf16 --seq-len 2048 \\
        --micro-batch auto --attn sdpa,flash_attention_2 --compile off,on --tag llama3-1.5b

One timed step is the trainer's own, `training.trainer.Trainer.train_step` (benchmarks/trainer_step.py):
fetch the micro-batch -> forward -> backward -> clip -> AdamW step (`training.optim.build_optimizer`,
fused on CUDA) -> zero_grad -> LR schedule step, under accelerate's mixed precision. Every variant
(ours with the chunked loss, as training runs it, or the full-logits loss; the native `modeling.to_hf`
model; per attention backend and compile setting) starts from the same weights and the same batch,
warms up, then times `--iters` steps: CUDA events around each step on a GPU (no host sync inside the
loop), perf_counter (+ synchronize) otherwise. We report the median step time (and min / p90),
tokens/s, achieved TFLOP/s from `modeling.flops_per_token` (PaLM definition, see README "Models"), MFU
against `training.hardware.peak_flops` (null on CPU), peak memory, and ours/native ratios.

On CPU the variants of one configuration are timed in interleaved rounds (A B A B ...), so a noisy
neighbour slows both sides alike; on CUDA they run one after another, each alone on the GPU, so that
peak memory is per variant and the largest micro-batch of each can be found (`--micro-batch auto`).
Output: a table on stdout, and JSON + markdown (default benchmarks/results/<device>-<date>[-<tag>]).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from modeling import FLOPS_DEFINITION, DecoderConfig, DecoderForCausalLM, count_parameters, flops_per_token
from modeling.describe import ARCH_FIELDS, parse_overrides
from modeling.losses import auto_chunk_size
from modeling.names import ATTN_IMPLEMENTATIONS
from training.precision import PRECISION_NAMES

from .report import write_json, write_text
from .step_report import add_ratios, default_paths, device_info, summarize, throughput_metrics, to_markdown
from .step_session import CPU_DEFAULTS, CUDA_DEFAULTS, Session
from .timing import split_rounds
from .trainer_step import check_precision

logger = logging.getLogger("benchmarks.step")

PROG = "python -m benchmarks.step"
SCHEMA_VERSION = 1
ATTN_CHOICES = tuple(a for a in ATTN_IMPLEMENTATIONS if a != "auto")  # each variant names its backend
LOSS_CHOICES = ("chunked", "full")  # ours: chunked LM-head CE (return_logits=False) or full logits + CE
MAX_AUTO_MICRO_BATCH = 64


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every variant; returns the result document (rows, ratios, summary) written as JSON."""
    device = torch.device(args.device)
    overrides = parse_overrides(args.set or [])
    try:
        config = DecoderConfig.from_preset(args.preset, **overrides)
    except (KeyError, ValueError) as exc:  # unknown preset or field, wrong type or value: named in the message
        raise SystemExit(f"--preset {args.preset} --set {' '.join(args.set or []) or '(none)'}: "
                         f"{exc.args[0] if exc.args else exc}")
    try:
        config.check_seq_len(args.seq_len, "--seq-len")
    except ValueError as exc:
        raise SystemExit(str(exc))
    dev = device_info(device, args.dtype)
    fpt = flops_per_token(config, args.seq_len)
    session = Session(args, config, device)
    session.run()
    variants, rows, times, profiles = session.variants, session.rows, session.times, session.profiles

    for v in variants:
        row = rows[v.label]
        if row["status"] == "ok" and times[v.label]:
            row.update(throughput_metrics(times[v.label], row["tokens_per_step"], fpt, dev["peak_flops"]))
    add_ratios(rows, variants)
    result = {
        "schema_version": SCHEMA_VERSION,
        "tool": "benchmarks.step",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([PROG] + sys.argv[1:]),
        "device": dev,
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "cuda": torch.version.cuda,
            "cpu_threads": torch.get_num_threads(),
        },
        "settings": {
            "preset": args.preset, "overrides": overrides, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
            "dtype": args.dtype, "precision": args.precision, "warmup": args.warmup, "iters": args.iters,
            "rounds": len(split_rounds(args.iters, args.rounds)) if args.interleave else 1,
            "interleave": args.interleave, "seed": args.seed,
            "optimizer": "training.optim.build_optimizer (AdamW; fused on CUDA)",
            "loss_chunk_size": DecoderForCausalLM.loss_chunk_size or auto_chunk_size(config.vocab_size),
        },
        "model": {
            "architecture": {f: getattr(config, f) for f in ARCH_FIELDS}, "parameters": count_parameters(config)["total"],
            "flops_per_token": fpt, "flops_definition": FLOPS_DEFINITION,
        },
        "rows": [rows[v.label] for v in variants],
    }
    result["summary"] = summarize(result["rows"])
    result["ratio_tokens_per_sec_vs_native"] = result["summary"]["ratio_tokens_per_sec_vs_native"]
    if profiles:
        result["profile_dir"], result["profiles"] = str(args.profile), profiles
    return result


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-llama", help="modeling preset (default: tiny-llama)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="DecoderConfig field overrides")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 256 on CPU, 2048 on CUDA)")
    p.add_argument("--micro-batch", help="sequences per step, or 'auto' (CUDA: largest power of two that fits, "
                   "searched per variant without compile); default 4 on CPU, 1 on CUDA")
    p.add_argument("--max-micro-batch", type=int, default=MAX_AUTO_MICRO_BATCH, help="upper bound of --micro-batch auto")
    p.add_argument("--dtype", choices=PRECISION_NAMES, default=None, help="compute dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--precision", choices=("amp", "pure"), default="amp",
                   help="amp: fp32 weights + autocast(dtype) (accelerate's mixed precision; fp16 adds a GradScaler); "
                        "pure: weights and AdamW state in dtype")
    p.add_argument("--attn", default=",".join(ATTN_CHOICES), help="comma-separated attention backends; "
                   "unavailable ones are reported as skipped with the reason")
    p.add_argument("--compile", default="off", help="comma-separated subset of off,on (torch.compile per decoder "
                   "block, in place, as training compiles: training.run.prepare_for_training)")
    p.add_argument("--loss", default="chunked", help="ours' loss path(s), comma-separated subset of chunked,full: "
                   "chunked = forward(..., return_logits=False), full = logits + cross-entropy (as native)")
    p.add_argument("--no-native", action="store_true", help="skip the native transformers model")
    p.add_argument("--warmup", type=int, help="untimed steps per variant (compile happens here); default 3 CPU, 5 CUDA")
    p.add_argument("--iters", type=int, help="timed steps per variant; default 20 CPU, 30 CUDA")
    p.add_argument("--rounds", type=int, help="CPU: split the timed steps into this many interleaved rounds (default 4)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="time the variants of one configuration in alternating rounds, all alive at once "
                        "(default: on for CPU, off for CUDA where each runs alone for memory and batch size)")
    p.add_argument("--threads", type=int, help="CPU: torch.set_num_threads (default: torch's choice). On a shared "
                   "machine 1 thread is far steadier than an oversubscribed pool")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", metavar="DIR", help="also profile --profile-steps steps of each variant: chrome "
                   "traces in DIR, top-ops tables on stdout")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--json", metavar="FILE",
                   help="write the JSON here (default: benchmarks/results/<device>-<date>[-<tag>].json)")
    p.add_argument("--md", metavar="FILE", help="write the markdown table here (default: next to the default JSON)")
    p.add_argument("--tag", help="suffix of the default file names, e.g. the preset")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def parse_set(text: str, choices: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise SystemExit(f"{flag}: unknown value(s) {bad or text!r}; choose from {', '.join(choices)}")
    return list(dict.fromkeys(items))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Device-dependent defaults and validation."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    defaults = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for key in ("seq_len", "warmup", "iters", "rounds"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.micro_batch is None:
        args.micro_batch = defaults["micro_batch"]
    elif args.micro_batch != "auto":
        try:
            args.micro_batch = int(args.micro_batch)
        except ValueError:
            raise SystemExit(f"--micro-batch expects a positive integer or 'auto', got {args.micro_batch!r}")
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    if args.interleave is None:
        args.interleave = args.device == "cpu"
    for key in ("seq_len", "warmup", "iters", "rounds"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    try:
        check_precision(torch.device(args.device), args.dtype, pure=args.precision == "pure")
    except ValueError as exc:
        raise SystemExit(f"--dtype {args.dtype} --precision {args.precision}: {exc} (or --precision pure: fp16 weights)")
    args.attn = parse_set(args.attn, ATTN_CHOICES, "--attn")
    args.compile = [c == "on" for c in parse_set(args.compile, ("off", "on"), "--compile")]
    args.loss = parse_set(args.loss, LOSS_CHOICES, "--loss")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = resolve_args(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args)
    if result.get("profiles"):
        print("\n\n".join(result.pop("profiles")))
    md = to_markdown(result)
    print(md)
    json_path, md_path = default_paths(result, args.tag)
    if args.json or args.md:  # explicit paths only: no default files
        json_path, md_path = (Path(args.json) if args.json else None), (Path(args.md) if args.md else None)
    if json_path is not None:
        write_json(result, json_path)
        logger.info("wrote %s", json_path)
    if md_path is not None:
        write_text(md_path, md)
        logger.info("wrote %s", md_path)
    return result


if __name__ == "__main__":
    main()
