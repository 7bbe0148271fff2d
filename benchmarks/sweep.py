"""Measure (micro-batch, accumulation) pairs at one global batch and pick the fastest that fits.

    python -m benchmarks.sweep                                 # tiny-llama on CPU, global batch 16
    python -m benchmarks.sweep --preset qwen3-1.8b --device cuda --dtype bf16 --seq-len 2048 \\
        --global-batch 64 --micro-batches 1,2,4,8,16 --iters 5 --json sweep.json
    python -m benchmarks.sweep --data data/demo ...            # real tokens (data_prep.PackedTokenDataset)

Every configuration trains a freshly initialised model (same seed) for `--iters` optimizer steps of
`global_batch` sequences = micro_batch x accumulation (a `training.batch_plan.BatchPlan`), each step
the trainer's own `Trainer.train_step` (benchmarks/trainer_step.py: accelerate's mixed precision and
accumulation, clip, AdamW, LR schedule), over the model prepared as training prepares it
(`training.run.prepare_for_training`: `--activation-checkpointing`, then `--compile on` per decoder
block; the first step compiles, so keep `--warmup` >= 1 with it). Each phase of a step is timed through
the trainer's NVTX ranges (benchmarks/timing.py PhaseTimer): data (fetch + copy to the device), forward,
backward (summed over the micro-batches), and optimizer: the rest of the step (clip, optimizer step +
zero_grad, LR schedule step, the loss bookkeeping). On CUDA every phase boundary is a torch.cuda.synchronize(), so
the breakdown is exact at the price of a few idle microseconds per phase (the trainer itself does not
sync per step). The first `--warmup` steps (allocator growth, kernel autotuning) are not measured.

The loss is the full-logits one unless `--chunked-loss` (what training runs: `return_logits=False`).
A configuration that runs out of memory (torch.cuda.OutOfMemoryError, or the CPU allocator's
"can't allocate memory") is reported as not fitting and the sweep goes on. This is a single-process
measurement: it says which micro-batch is fastest per GPU, not what communication will cost.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
from typing import Any, Callable, Iterator, Sequence

import torch

from modeling import PRESETS, DecoderConfig, DecoderForCausalLM, flops_per_token
from modeling.names import ATTN_IMPLEMENTATIONS
from training.batch_plan import BatchPlan
from training.precision import PRECISION_NAMES

from .memory import cuda_peak_gib, free_device_memory, is_oom, reset_peak
from .report import fmt, format_table, write_json
from .timing import PhaseTimer, Stopwatch
from .trainer_step import build_step_trainer, check_precision

PROG = "python -m benchmarks.sweep"
PHASES = ("data", "forward", "backward", "optimizer")
# the trainer's NVTX ranges (training/trainer.py) per reported phase; "optimizer" is the rest of the step
RANGES = {"data": ("data_fetch",), "forward": ("forward",), "backward": ("backward",)}


def random_batches(vocab_size: int, micro_batch: int, seq_len: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, next-token labels) of uniformly random tokens: the cost of a step does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    while True:
        tokens = torch.randint(0, vocab_size, (micro_batch, seq_len + 1), generator=g)
        yield tokens[:, :-1], tokens[:, 1:]


def dataset_batches(data_dir: str, micro_batch: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stacks of `micro_batch` samples from data_prep.PackedTokenDataset(DIR, seq_len, split="train")."""
    from data_prep import PackedTokenDataset  # optional: only with --data

    samples = iter(PackedTokenDataset(data_dir, seq_len=seq_len, split="train"))
    while True:
        pairs = [next(samples) for _ in range(micro_batch)]
        yield torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def data_vocab_size(data_dir: str) -> int:
    """The model vocabulary for the data, as training picks it (data_prep.model_vocab_size)."""
    from data_prep import load_manifest, model_vocab_size

    return model_vocab_size(load_manifest(data_dir))


def measure(
    config: DecoderConfig,
    *,
    plan: BatchPlan,
    iters: int,
    warmup: int,
    device: torch.device,
    dtype: str,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    lr: float = 3e-4,
    seed: int = 0,
    chunked_loss: bool = False,
    compile: bool = False,
    activation_checkpointing: bool = False,
    on_step: Callable[[], None] | None = None,
) -> dict:
    """Train `iters` trainer steps of `plan` (micro-batch x accumulation); per-phase milliseconds per step (mean
    over the steps after `warmup`), tokens/s, peak memory. Raises the OOM error for the caller to classify."""
    torch.manual_seed(seed)
    model = steps = None
    if compile:  # each configuration compiles afresh, as a training run starts (static shapes, no earlier graphs)
        torch._dynamo.reset()
    reset_peak(device)
    timer = PhaseTimer(device)
    records: list[dict[str, float]] = []
    out = None
    try:
        model = DecoderForCausalLM(config).to(device).train()
        steps = build_step_trainer(model, device=device, precision=dtype, batch=plan, batches=batches, lr=lr,
                                   loss="chunked" if chunked_loss else "full", compile=compile,
                                   activation_checkpointing=activation_checkpointing, attn=config._attn_implementation)
        with timer.installed():
            for _ in range(iters):
                # One synchronized step at a time (not time_calls): its phases are read between the steps, and
                # the wall time must bracket the same synchronized work as the phase ranges do.
                with Stopwatch(device=device) as step:
                    out = steps.step()
                spent = timer.take()
                t = {p: sum(spent.get(r, 0.0) for r in RANGES[p]) for p in RANGES}
                t["optimizer"] = max(0.0, step.wall_s - sum(t.values()))
                records.append(t)
                if on_step:
                    on_step()
        measured = records[warmup:] if len(records) > warmup else records[-1:]
        per_phase = {p: 1000 * statistics.fmean(s[p] for s in measured) for p in PHASES}
        step_ms = sum(per_phase.values())
        return {
            "status": "ok", "measured_steps": len(measured),
            "step_ms": step_ms, **{f"{p}_ms": v for p, v in per_phase.items()},
            "tokens_per_sec": plan.tokens_per_iter / (step_ms / 1000),
            "peak_mem_gib": cuda_peak_gib(device),
            "final_loss": float(out.loss) if out is not None else None,  # the last step's mean; sync: once, at the end
        }
    finally:
        del model, steps
        free_device_memory(device)


def sweep(
    preset: str = "tiny-llama",
    *,
    global_batch: int = 16,
    micro_batches: Sequence[int] = (1, 2, 4, 8),
    seq_len: int = 128,
    iters: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    data: str | None = None,
    attn: str = "auto",
    lr: float = 3e-4,
    chunked_loss: bool = False,
    compile: bool = False,
    activation_checkpointing: bool = False,
    progress: bool = True,
) -> dict:
    """Measure every micro-batch that divides `global_batch`; return the rows and the fastest that fits."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False; use --device cpu")
    check_precision(dev, dtype)  # an unknown name, or fp16 on a CPU: one error naming the fix
    if chunked_loss and "return_logits" not in inspect.signature(DecoderForCausalLM.forward).parameters:
        raise ValueError("--chunked-loss needs DecoderForCausalLM.forward(..., return_logits=False) (modeling/losses.py)")
    if iters < 1 or global_batch < 1:
        raise ValueError(f"--iters and --global-batch must be >= 1 (got {iters}, {global_batch})")
    overrides: dict[str, Any] = {"attn_implementation": attn}
    if data:
        overrides["vocab_size"] = data_vocab_size(data)
    config = DecoderConfig.from_preset(preset, **overrides)
    config.check_seq_len(seq_len, "--seq-len")

    # the global batch as a plan (micro-batch 1 divides every global batch): its tokens are every row's
    whole = BatchPlan.from_global(seq_len, 1, world_size=1, global_sequences=global_batch)
    plans: dict[int, BatchPlan | None] = {}
    for m in micro_batches:
        try:
            plans[m] = BatchPlan.from_global(seq_len, m, world_size=1, global_sequences=global_batch)
        except ValueError:  # not a divisor: skipped, the sweep goes on
            plans[m] = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iters * sum(p is not None for p in plans.values()), desc="sweep", unit="step", leave=False)
    rows = []
    for m in micro_batches:
        plan = plans[m]
        row: dict[str, Any] = {"micro_batch": m, "accum": plan.grad_accum_steps if plan else None}
        if plan is None:
            row.update(status="skipped", reason=f"{m} does not divide the global batch {global_batch}")
            rows.append(row)
            continue
        if bar:
            bar.set_postfix_str(f"micro-batch {m} x {row['accum']}")
        batches = dataset_batches(data, m, seq_len) if data else random_batches(config.vocab_size, m, seq_len)
        done = [0]

        def step_done() -> None:
            done[0] += 1
            if bar:
                bar.update()

        try:
            row.update(measure(config, plan=plan, iters=iters, warmup=warmup, device=dev, dtype=dtype, batches=batches,
                               lr=lr, chunked_loss=chunked_loss, compile=compile,
                               activation_checkpointing=activation_checkpointing, on_step=step_done))
        except Exception as exc:  # noqa: BLE001 - only OOM is classified; anything else propagates
            if not is_oom(exc):
                raise
            row.update(status="OOM", reason=str(exc).splitlines()[0][:200])
            if bar:
                bar.update(iters - done[0])
        rows.append(row)
    if bar:
        bar.close()
    fitting = [r for r in rows if r["status"] == "ok"]
    best = max(fitting, key=lambda r: r["tokens_per_sec"]) if fitting else None
    return {
        "preset": preset, "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype, "attn_implementation": attn, "loss": "chunked" if chunked_loss else "plain",
        "compile": compile, "activation_checkpointing": activation_checkpointing,
        "data": data or "random tokens", "global_batch": whole.global_sequences,
        "seq_len": whole.seq_len, "tokens_per_step": whole.tokens_per_iter, "iters": iters, "warmup": warmup,
        "flops_per_token": flops_per_token(config, seq_len), "rows": rows,
        "best": {"micro_batch": best["micro_batch"], "accum": best["accum"], "tokens_per_sec": best["tokens_per_sec"]} if best else None,
    }


def format_sweep(result: dict) -> str:
    headers = ["micro", "accum", "status", "tokens/s", "step ms", "data ms", "fwd ms", "bwd ms", "opt ms", "peak GiB", "loss"]
    rows = []
    for r in result["rows"]:
        mark = " *" if result["best"] and r["micro_batch"] == result["best"]["micro_batch"] and r["status"] == "ok" else ""
        rows.append([
            f"{r['micro_batch']}{mark}", fmt(r.get("accum"), "d"), r["status"], fmt(r.get("tokens_per_sec"), ",.0f"),
            fmt(r.get("step_ms"), ".1f"), fmt(r.get("data_ms"), ".2f"), fmt(r.get("forward_ms"), ".1f"),
            fmt(r.get("backward_ms"), ".1f"), fmt(r.get("optimizer_ms"), ".1f"), fmt(r.get("peak_mem_gib"), ".2f"),
            fmt(r.get("final_loss"), ".4f"),
        ])
    prepared = "".join([", compiled per block" if result.get("compile") else "",
                        ", activation checkpointing" if result.get("activation_checkpointing") else ""])
    head = (f"{result['preset']} on {result['device_name']} ({result['dtype']}, attention {result['attn_implementation']}, "
            f"{result['loss']} loss{prepared}), "
            f"global batch {result['global_batch']} x {result['seq_len']} tokens, {result['iters']} steps "
            f"({result['warmup']} warm-up not measured), data: {result['data']}")
    lines = [head, format_table(headers, rows)]
    if result["best"]:
        b = result["best"]
        lines.append(f"fastest that fits (*): micro-batch {b['micro_batch']} x {b['accum']} accumulation, "
                     f"{b['tokens_per_sec']:,.0f} tokens/s")
    else:
        lines.append("no configuration fits: lower --micro-batches or --seq-len")
    lines += [f"  micro-batch {r['micro_batch']}: {r['status']}: {r['reason']}" for r in result["rows"] if r.get("reason")]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"micro-batches must be positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-llama", help=f"one of: {', '.join(sorted(PRESETS))} (default tiny-llama)")
    ap.add_argument("--global-batch", type=int, default=16, help="sequences per optimizer step (default 16)")
    ap.add_argument("--micro-batches", type=_ints, default=[1, 2, 4, 8], help="comma list (default 1,2,4,8)")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    ap.add_argument("--iters", type=int, default=5, help="optimizer steps per configuration (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps not measured (default 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtype", default="fp32", choices=PRECISION_NAMES,
                    help="fp32, or bf16 / fp16 (CUDA) mixed precision over fp32 weights, as training runs it (default fp32)")
    ap.add_argument("--attn", default="auto", choices=ATTN_IMPLEMENTATIONS, help="attention backend (default auto)")
    ap.add_argument("--data", metavar="DIR", help="a data_prep output directory (default: random tokens)")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    ap.add_argument("--chunked-loss", action="store_true",
                    help="forward(..., return_logits=False): the chunked LM-head loss instead of full logits")
    ap.add_argument("--compile", choices=("off", "on"), default="off",
                    help="torch.compile per decoder block, as training's compile: true (default off)")
    ap.add_argument("--activation-checkpointing", action="store_true",
                    help="recompute block activations in backward, as training's activation_checkpointing: true")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' for JSON on stdout only)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        result = sweep(args.preset, global_batch=args.global_batch, micro_batches=args.micro_batches,
                       seq_len=args.seq_len, iters=args.iters, warmup=args.warmup, device=args.device,
                       dtype=args.dtype, data=args.data, attn=args.attn, lr=args.lr, chunked_loss=args.chunked_loss,
                       compile=args.compile == "on", activation_checkpointing=args.activation_checkpointing,
                       progress=not args.no_progress and args.json != "-")
    except (ValueError, KeyError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        write_json(result, "-")
        return 0
    print(format_sweep(result))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
