"""`python -m training.planning`: argparse, one table per subcommand, and --json. It only formats: the
numbers come from scaling, memory, batch and timing."""

from __future__ import annotations

import argparse
import sys

from modeling import PRESETS

from ..analysis import summarize
from ..tables import fmt, format_table, write_json
from ..hardware import known_gpus
from . import __doc__ as PACKAGE_DOC  # usage and conventions: the description --help prints
from .batch import SAFETY_MARGIN, plan_batch
from ..precision import PRECISION_NAMES
from .memory import ATTENTION_BACKENDS, STRATEGIES, STRATEGY_HELP, estimate_memory
from .scaling import COMPLIANT_BAND, FAMILIES, TOKENS_PER_PARAM, chinchilla, optimal
from .timing import DEFAULT_SETUPS, estimate_time


def _number(text: str) -> float:
    """'36e9', '36B', '1.5T', '720_896', '2.2M' -> float."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    if t and t[-1].lower() in scale:
        return float(t[:-1]) * scale[t[-1].lower()]
    try:
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (examples: 36e9, 36B, 1.5T)") from None


def _int(text: str) -> int:
    value = _number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _b(x: float | None, digits: int = 3) -> str:
    return fmt(x / 1e9 if x is not None else None, f".{digits}f")


def _print_chinchilla(r: dict) -> None:
    rows = [["N (parameters)", f"{r['n_params']:,.0f}", r["n_params_definition"]]]
    if "non_embedding_params" in r:
        rows.append(["N non-embedding", f"{r['non_embedding_params']:,.0f}", "for reference (Kaplan's N)"])
    rows.append(["target D = 20N", f"{r['target_tokens']:,.0f}", f"predicted loss {r['target_loss']:.4f}"])
    if r["target_iters"]:
        rows.append(["target iterations", f"{r['target_iters']:,}", f"at {r['tokens_per_iter']:,} tokens/iter"])
    flops = f"{r['target_flops']:.3e} (flops_per_token at seq {r['seq_len']})" if r.get("target_flops") else ""
    rows.append(["target compute 6ND", f"{r['target_flops_6nd']:.3e}", flops])
    if "tokens" in r:
        rows.append(["D (this run)", f"{r['tokens']:,.0f}", f"D/N = {r['tokens_per_param']:.1f}: {r['status']} "
                     f"(compliant: {TOKENS_PER_PARAM * (1 - COMPLIANT_BAND):g}-{TOKENS_PER_PARAM * (1 + COMPLIANT_BAND):g})"])
        if r["iters"]:
            rows.append(["iterations", f"{r['iters']:,}", f"at {r['tokens_per_iter']:,} tokens/iter"])
        rows.append(["predicted loss", f"{r['loss']:.4f}", "L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28"])
        rows.append(["compute 6ND", f"{r['flops_6nd']:.3e}", f"{r['flops']:.3e} by flops_per_token" if r.get("flops") else ""])
    print(format_table(["quantity", "value", "note"], rows))


def _arch_rows(rows: list[dict]) -> list[list[str]]:
    return [[i, r["family"], r["layers"], r["hidden"], f"{r['heads']}/{r['kv_heads']}", r["intermediate"],
             _b(r["n_params"]), _b(r["non_embedding_params"]), f"{r['flops_per_token']:.3e}", _b(r["tokens"], 1),
             f"{r['tokens_per_param']:.1f}", f"{r['loss']:.4f}"] for i, r in enumerate(rows, 1)]


ARCH_HEADERS = ["#", "family", "layers", "hidden", "heads/kv", "mlp", "N (B)", "N non-emb (B)", "FLOPs/token",
                "D (B)", "D/N", "loss"]


def _print_optimal(r: dict) -> None:
    c = r["closed_form"]
    print(f"FLOPs budget C = {r['flops']:.3e}; N = {r['n_params_definition']}")
    print(f"\nclosed form (C = 6ND; G = {c['G']:.4f}, a = {c['a']:.4f}, b = {c['b']:.4f}):")
    print(format_table(["", "N (B)", "D (B)", "D/N", "loss"],
                       [["closed-form optimum", _b(c["n_params"]), _b(c["tokens"], 1), f"{c['tokens_per_param']:.1f}",
                         f"{c['loss']:.4f}"]]))
    print(f"\ngrid search, unconstrained ({r['feasible']} of {r['grid_size']} architectures feasible; "
          f"D = C / flops_per_token at seq {r['seq_len']}):")
    print(format_table(ARCH_HEADERS, _arch_rows(r["unconstrained"])))
    print(f"\ngrid search, {r['constraint']['description']}:")
    print(format_table(ARCH_HEADERS, _arch_rows(r["constrained"])) if r["constrained"] else "  (none)")
    print("\nbest per family:")
    print(format_table(ARCH_HEADERS, _arch_rows(list(r["best_per_family"].values()))))
    if "seed_comparison" in r:
        print("\nthe reference architectures' published search at this budget (C = 1.36e21), under the same fit:")
        print(format_table(["", "N (B)", "D (B)", "D/N", "loss", "6ND / C"],
                           [[s["name"], _b(s["n_params"]), _b(s["tokens"], 1), f"{s['tokens_per_param']:.1f}",
                             f"{s['loss']:.4f}", f"{s['flops_6nd'] / r['flops']:.2f}"] for s in r["seed_comparison"]]))
    for note in r["notes"]:
        print(f"note: {note}")


def _print_memory(results: list[dict]) -> None:
    first = results[0]
    print(f"{first['preset'] or 'model'}: {first['n_params']:,} params (P), micro-batch {first['micro_batch']}, "
          f"seq {first['seq_len']}, {first['precision']}, attention {first['attention']}, {first['loss']} loss, "
          "activation checkpointing " + (f"every {first['activation_checkpointing_every']} block(s)"
                                          if first["activation_checkpointing"] else "off") + f", W = {first['world_size']}")
    headers = ["GiB per GPU"] + [r["strategy"] for r in results]
    keys = ["weights", "gradients", "optimizer", "activations", "step_transient", "overhead"]
    rows = [[k] + [f"{r['components_gib'][k]:.2f}" for r in results] for k in keys]
    rows.append(["total (peak)"] + [f"{r['total_gib']:.2f}" for r in results])
    rows.append(["peak phase"] + [r["peak_phase"] for r in results])
    print(format_table(headers, rows))
    print("(step_transient is allocated inside optimizer.step, when activations are freed: the larger of the two counts)")
    for r in results:
        print(f"\n{r['strategy']}: {r['strategy_description']}")
        print(format_table(["component", "what", "formula", "GiB"],
                           [[t["component"], t["what"], t["formula"], f"{t['gib']:.3f}"] for t in r["terms"]]))
    act = first["activation_model"]
    print(f"\nactivation bytes per token per layer (e = {act['compute_bytes']}, r = {act['residual_bytes']}; "
          f"total {act['layer_bytes_per_token']:,} = {act['layer_bytes_per_token_over_h']:.1f} h):")
    print(format_table(["term", "bytes/token/layer"], [[k, f"{v:,}"] for k, v in act["per_layer_per_token_bytes"].items()]
                       + [[f"once per token: {k}", f"{v:,}"] for k, v in act["once_per_token_bytes"].items()]))


def _print_batch(r: dict) -> None:
    rows = [
        ["GPU", f"{r['num_gpus']} x {r['gpu']} ({r['gpu_memory_gib']:g} GiB, budget {r['budget_gib']:.1f} GiB "
                f"with {100 * r['safety_margin']:.0f}% kept free)"],
        ["model", f"{r['preset']}, seq {r['seq_len']}, {r['precision']}, {r['strategy']}, attention {r['attention']}, "
                  f"{r['loss']} loss, checkpointing " + (f"every {r['activation_checkpointing_every']} block(s)"
                                                          if r["activation_checkpointing"] else "off")],
        ["largest micro-batch that fits", f"{r['max_micro_batch_fit']} ({r['memory_at_max_fit_gib']:.1f} GiB)"],
        ["chosen micro-batch", f"{r['micro_batch']} ({r['memory_gib']:.1f} GiB estimated peak)"],
        ["gradient accumulation", str(r["grad_accum_steps"])],
        ["global batch", f"{r['global_batch_sequences']} sequences = {r['tokens_per_iter']:,} tokens"],
        ["divisibility", r["divisibility"]],
    ]
    print(format_table(["", "plan"], rows))
    comp = r["memory_components_gib"]
    print("memory at the chosen micro-batch (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in comp.items()))
    for note in r["notes"]:
        print(f"note: {note}")


def _print_time(r: dict) -> None:
    print(f"{r['preset']}: {r['n_params'] / 1e9:.3f}B params, {r['tokens']:,.0f} tokens ({r['tokens_source']}), "
          f"{r['flops_per_token']:.3e} FLOPs/token at seq {r['seq_len']} -> {r['total_flops']:.3e} FLOPs; "
          f"MFU {r['mfu']:.2f}, {r['dtype']} dense peaks"
          + (f"; {r['iters']:,} iterations of {r['tokens_per_iter']:,} tokens" if r["iters"] else ""))
    print(format_table(
        ["setup", "peak/GPU (TFLOP/s)", "tokens/s", "Mtokens/h", "s/iter", "hours", "days"],
        [[s["setup"], f"{s['peak_flops_per_gpu'] / 1e12:,.1f}", f"{s['tokens_per_sec']:,.0f}",
          f"{s['tokens_per_hour'] / 1e6:,.1f}", fmt(s["seconds_per_iter"], ".2f"), f"{s['hours']:,.1f}",
          f"{s['days']:,.2f}"] for s in r["setups"]]))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.planning", description=PACKAGE_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = ", ".join(sorted(PRESETS))

    def add(name: str, help_: str, doc: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' for JSON on stdout only)")
        return p

    p = add("chinchilla", "D = 20N target, D/N status, iterations, predicted loss",
            "Chinchilla check of a model and token count. N = total parameters (Hoffmann et al.'s convention).")
    p.add_argument("--preset", help=f"one of: {presets}")
    p.add_argument("--params", type=_number, help="N, total parameters (instead of --preset), e.g. 1.8B")
    p.add_argument("--tokens", type=_number, help="D, training tokens of the run, e.g. 36B")
    p.add_argument("--tokens-per-iter", type=_int, help="global batch tokens per optimizer step (for iteration counts)")
    p.add_argument("--seq-len", type=_int, default=2048, help="for FLOPs per token (default 2048)")

    p = add("optimal", "compute-optimal N, D for a FLOPs budget: closed form + architecture grid",
            "Closed-form optimum of the approach-3 fit under C = 6ND, and a grid of gpt2/llama3/qwen3-shaped\n"
            "architectures (heads = hidden/128, family MLP ratio, GQA and vocabulary) ranked by predicted loss\n"
            "with D = C / flops_per_token(config, seq_len).")
    p.add_argument("--flops", type=_number, required=True, help="training compute budget C in FLOPs, e.g. 1.36e21")
    p.add_argument("--seq-len", type=_int, default=2048, help="sequence length for FLOPs per token (default 2048)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--min-tokens-per-param", type=float, help="constrained search: D/N >= this (e.g. 20)")
    p.add_argument("--max-tokens-per-param", type=float, help="constrained search: D/N <= this")
    p.add_argument("--floor-tokens-per-param", type=float, default=1.0,
                   help="architectures seeing fewer tokens per parameter are infeasible (default 1)")
    p.add_argument("--top", type=int, default=10, help="rows per ranked table (default 10)")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", required=True, help=f"one of: {presets}")
        p.add_argument("--seq-len", type=_int, default=2048, help="tokens per sequence (default 2048)")
        p.add_argument("--precision", default="bf16", choices=PRECISION_NAMES,
                       help="bf16/fp16 mixed precision or pure fp32 (default bf16)")
        p.add_argument("--attention", default="flash", choices=list(ATTENTION_BACKENDS),
                       help="flash/sdpa: O(S) activations; eager: O(S^2) score matrices (default flash)")
        p.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
        p.add_argument("--activation-checkpointing-every", type=_int, default=1, metavar="N",
                       help="memory: recompute blocks 0, N, 2N, ... only (default 1: all); batch picks the "
                            "largest N that fits by itself")
        p.add_argument("--loss", default="chunked", choices=["plain", "chunked"],
                       help="chunked: model(..., return_logits=False), no (tokens x vocab) tensor, what "
                            "training/trainer.py calls (default); plain: model(...).loss with full logits")

    p = add("memory", "per-GPU memory: weights, gradients, optimizer, activations, overhead",
            "Per-GPU peak memory estimate (GiB). See estimate_memory / activation_memory for every formula.")
    model_args(p)
    p.add_argument("--micro-batch", type=_int, default=1, help="sequences per GPU per forward (default 1)")
    p.add_argument("--strategy", default="zero1",
                   help="comma list of " + "; ".join(f"{k}: {v}" for k, v in STRATEGY_HELP.items()) + " (default zero1)")
    p.add_argument("--world-size", type=_int, default=1, help="data-parallel GPUs sharing the states (default 1)")
    p.add_argument("--grad-accum-dtype", choices=["bf16", "fp32"],
                   help="DeepSpeed gradient accumulation dtype (default: fp32 for zero1 as in ds_configs, else bf16)")

    p = add("batch", "largest micro-batch that fits + accumulation for a global batch",
            "Largest micro-batch whose estimated peak fits in the GPU (minus a safety margin), then the\n"
            "micro-batch x accumulation x GPUs that reaches the global batch exactly.")
    model_args(p)
    p.add_argument("--gpu", required=True, help=f"one of: {', '.join(known_gpus())} (or a torch device name)")
    p.add_argument("--num-gpus", type=_int, default=1, help="data-parallel GPUs (default 1)")
    p.add_argument("--global-batch-tokens", type=_int, help="target tokens per optimizer step (multiple of seq-len)")
    p.add_argument("--global-batch-sequences", type=_int, help="target sequences per optimizer step")
    p.add_argument("--strategy", default="zero1", choices=STRATEGIES, help="parallel strategy (default zero1)")
    p.add_argument("--safety-margin", type=float, default=SAFETY_MARGIN, help="fraction of GPU memory kept free (default 0.05)")
    p.add_argument("--gpu-memory-gb", type=float, help="override the table's memory (e.g. 40 for an A100 40GB)")

    p = add("time", "iterations, tokens and wall-clock on given hardware",
            "Wall-clock from tokens, FLOPs per token, the dense peak table and an MFU (assumed or from a log).")
    p.add_argument("--preset", required=True, help=f"one of: {presets}")
    p.add_argument("--tokens", type=_number, help="training tokens (default: 20 x total params)")
    p.add_argument("--iters", type=_int, help="optimizer steps (with --tokens-per-iter), instead of --tokens")
    p.add_argument("--tokens-per-iter", type=_int, help="global batch tokens per optimizer step")
    p.add_argument("--seq-len", type=_int, default=2048, help="for FLOPs per token (default 2048)")
    p.add_argument("--gpu", help="GPU model (with --num-gpus); default: compare " + " vs ".join(DEFAULT_SETUPS))
    p.add_argument("--num-gpus", type=_int, default=1, help="GPUs with --gpu (default 1)")
    p.add_argument("--setup", action="append", default=[], metavar="KxGPU", help="a setup like 8xB200; repeatable")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU (default 0.4)")
    p.add_argument("--mfu-from-log", metavar="RUN_DIR", help="use the mean MFU measured in a run log instead")
    p.add_argument("--dtype", default="bf16", help="peak table column (default bf16)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "chinchilla":
            result = chinchilla(args.params, args.tokens, preset=args.preset, seq_len=args.seq_len,
                                tokens_per_iter=args.tokens_per_iter)
            show = _print_chinchilla
        elif args.command == "optimal":
            result = optimal(args.flops, seq_len=args.seq_len, families=[f for f in args.families.split(",") if f],
                             min_tokens_per_param=args.min_tokens_per_param, max_tokens_per_param=args.max_tokens_per_param,
                             floor_tokens_per_param=args.floor_tokens_per_param, top=args.top)
            show = _print_optimal
        elif args.command == "memory":
            results = [estimate_memory(args.preset, micro_batch=args.micro_batch, seq_len=args.seq_len,
                                       precision=args.precision, strategy=s.strip(), world_size=args.world_size,
                                       attention=args.attention, activation_checkpointing=args.activation_checkpointing,
                                       activation_checkpointing_every=args.activation_checkpointing_every,
                                       loss=args.loss, grad_accum_dtype=args.grad_accum_dtype)
                       for s in args.strategy.split(",") if s.strip()]
            result = results[0] if len(results) == 1 else {"strategies": results}
            show = lambda _r: _print_memory(results)  # noqa: E731
        elif args.command == "batch":
            result = plan_batch(args.gpu, args.num_gpus, args.preset, args.seq_len,
                                global_batch_tokens=args.global_batch_tokens,
                                global_batch_sequences=args.global_batch_sequences, strategy=args.strategy,
                                precision=args.precision, attention=args.attention,
                                activation_checkpointing=args.activation_checkpointing, loss=args.loss,
                                safety_margin=args.safety_margin, gpu_memory_gb=args.gpu_memory_gb)
            show = _print_batch
        else:
            setups = list(args.setup) + ([(args.num_gpus, args.gpu)] if args.gpu else [])
            mfu = args.mfu
            if args.mfu_from_log:
                mfu = summarize(args.mfu_from_log)["mfu_mean"]
                if mfu is None:
                    raise ValueError(f"{args.mfu_from_log} has no MFU values (a CPU run, or an unknown GPU): pass --mfu")
            result = estimate_time(args.preset, tokens=args.tokens, iters=args.iters, tokens_per_iter=args.tokens_per_iter,
                                   seq_len=args.seq_len, setups=setups or DEFAULT_SETUPS, mfu=mfu, dtype=args.dtype)
            show = _print_time
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        write_json(result, "-")
        return 0
    show(result)
    if args.json:
        write_json(result, args.json)
    return 0
