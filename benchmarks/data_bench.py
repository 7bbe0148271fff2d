"""Benchmark: prepare's tokens per CPU-second against the raw Rust encoder, scaling with worker
processes, the hours it takes to prepare 117B tokens, and the loader's batches/s.

    python -m benchmarks.data_bench                                    # shipped corpus + tokenizer
    python -m benchmarks.data_bench --tokenizer /path/to/qwen3 --json bench.json
    python -m benchmarks.data_bench --corpus 'data/*.jsonl.zst' --workers 1 2 4 --target-tokens 117e9

"raw" is `Tokenizer.encode_batch_fast` over all documents of the same corpus in one call, the
ceiling for any pipeline built on it. "prepare" is the whole datatrove pipeline (`prepare` with
--tasks T --workers W: executor start-up, reading, encoding, train/val routing, packing, shard
writing with sha256, task records, manifest). Both count the same tokens (document tokens + one
separator each). Rates are per CPU-second (all threads and processes), which, unlike wall-clock
rates, hardly move when other jobs share the machine; "task" rates count only the CPU of the
tasks themselves (what grows with the corpus), "end to end" adds this process's start-up and
finalisation. The extrapolation divides --target-tokens by the per-core task rate times the cores
of one node (--node-cores) and of --nodes nodes, assuming tasks scale linearly (independent
processes, nothing shared but the input and output filesystems; the W = 1, 2 rows check that on
this machine). It leaves out download time: stage the corpus first or make sure the network keeps
up (~4 bytes of compressed JSONL per token).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from benchmarks.report import format_table, write_json
from benchmarks.timing import Stopwatch, time_total

from data_prep.readers import ReadStats
from data_prep.sources import ReadOptions, iter_chunks, resolve_inputs

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
DEFAULT_CORPUS = ASSETS / "corpus"
DEFAULT_TOKENIZER = ASSETS / "tokenizer"


def bench_prepare(corpus: Sequence[str], tokenizer: str, repeats: int, work: Path, tasks: int,
                  workers: Sequence[int] = (1, 2), chunk_chars: int = 1_000_000) -> dict[str, Any]:
    from data_prep.prepare import prepare
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    options = ReadOptions()
    units, _ = resolve_inputs(corpus, options)
    texts = [t for chunk in iter_chunks(units, options, ReadStats()) for t in chunk.texts]
    backend = tok.backend_tokenizer

    raw_cpu, raw_wall = [], []
    runs: dict[int, dict[str, list[float]]] = {w: {"wall": [], "cpu": [], "task_cpu": []} for w in workers}
    tokens = 0
    backend.encode_batch_fast(texts[:2000], add_special_tokens=False)  # warm the BPE cache
    for _ in range(repeats):  # alternate raw and prepare runs so drifting load hits both alike
        with Stopwatch() as raw:  # CPU seconds: this process's threads plus reaped children
            encs = backend.encode_batch_fast(texts, add_special_tokens=False)
        raw_wall.append(raw.wall_s)
        raw_cpu.append(raw.cpu_s)
        tokens = sum(len(e.ids) for e in encs) + len(texts)  # + the separator prepare appends
        del encs
        for w in workers:
            with Stopwatch() as run:
                m = prepare(corpus, tok, work / f"data_w{w}", seq_len=256, val_fraction=0.05, tasks=tasks,
                            workers=w, chunk_chars=chunk_chars, overwrite=True, progress=False)
            wall = run.wall_s
            produced = sum(s["tokens"] for s in m["splits"].values())
            if produced - (m["bos_id"] is not None) * m["stats"]["documents"] != tokens:
                raise RuntimeError(f"prepare wrote {produced} tokens, the raw encoder counted {tokens}")
            task_cpu = m["stats"]["task_cpu_seconds"]
            # workers = 1 runs the tasks in this process (already in the stopwatch's CPU); W > 1 runs
            # them in pool processes that are not our reaped children, so add their own count.
            cpu = run.cpu_s + (task_cpu if w > 1 else 0.0)
            runs[w]["wall"].append(wall)
            runs[w]["cpu"].append(cpu)
            runs[w]["task_cpu"].append(task_cpu)
    raw_cpu_s, raw_wall_s = statistics.median(raw_cpu), statistics.median(raw_wall)
    modes = []
    for w in workers:
        wall, cpu, task_cpu = (statistics.median(runs[w][k]) for k in ("wall", "cpu", "task_cpu"))
        modes.append({
            "workers": w,
            "tasks": tasks,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "task_cpu_s": round(task_cpu, 3),
            "tokens_per_s": round(tokens / wall, 1),
            "tokens_per_cpu_s": round(tokens / cpu, 1),
            "task_tokens_per_cpu_s": round(tokens / task_cpu, 1),
            "ratio_cpu": round(raw_cpu_s / cpu, 3),
            "ratio_task_cpu": round(raw_cpu_s / task_cpu, 3),
        })
    return {
        "tokenizer": str(tokenizer),
        "vocab_size": len(tok),
        "documents": len(texts),
        "tokens": tokens,
        "characters": sum(map(len, texts)),
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "raw_tokens_per_s": round(tokens / raw_wall_s, 1),
        "raw_cpu_s": round(raw_cpu_s, 3),
        "raw_tokens_per_cpu_s": round(tokens / raw_cpu_s, 1),
        "modes": modes,
    }


def extrapolate(prep: dict[str, Any], target_tokens: float, node_cores: int, nodes: int) -> dict[str, Any]:
    """Hours for `target_tokens` from the best measured per-core task rate (see module doc)."""
    rate = max(m["task_tokens_per_cpu_s"] for m in prep["modes"])
    one_node = target_tokens / (rate * node_cores) / 3600
    return {
        "target_tokens": target_tokens,
        "tokens_per_core_s": rate,
        "node_cores": node_cores,
        "hours_one_node": round(one_node, 2),
        "nodes": nodes,
        "hours_n_nodes": round(one_node / nodes, 2),
    }


def bench_loader(data_dir: Path, batch_size: int, seq_len: int, batches: int,
                 num_workers: int) -> dict[str, Any]:
    from data_prep.dataset import PackedTokenDataset, build_dataloader

    ds = PackedTokenDataset(data_dir, seq_len, "train", shuffle=True, seed=0)
    loader = build_dataloader(ds, batch_size, num_workers=num_workers)
    it = iter(loader)
    dt = time_total(lambda: next(it), batches, warmup=min(20, batches))  # warm-up: worker start-up, page cache
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "batches": batches,
        "batches_per_s": round(batches / dt, 1),
        "tokens_per_s": round(batches * batch_size * seq_len / dt, 1),
    }


def format_result(result: dict[str, Any]) -> str:
    lines = []
    for p, ex in zip(result["prepare"], result["extrapolation"]):
        rows = [["raw encode_batch_fast", f"{p['raw_tokens_per_s']:,.0f}", f"{p['raw_tokens_per_cpu_s']:,.0f}", "1.00",
                 f"{p['raw_tokens_per_cpu_s']:,.0f}", "1.00"]]
        rows += [[f"prepare --tasks {m['tasks']} --workers {m['workers']}", f"{m['tokens_per_s']:,.0f}",
                  f"{m['tokens_per_cpu_s']:,.0f}", f"{m['ratio_cpu']:.2f}", f"{m['task_tokens_per_cpu_s']:,.0f}",
                  f"{m['ratio_task_cpu']:.2f}"] for m in p["modes"]]
        lines += [
            f"tokenizer {p['tokenizer']} ({p['vocab_size']:,} tokens); corpus {p['documents']:,} documents, "
            f"{p['characters']:,} chars, {p['tokens']:,} tokens; {p['cpu_count']} CPUs (load "
            f"{p['load_avg_1min']}); median of {p['repeats']}",
            format_table(["measure", "wall tok/s", "tok/CPU-s", "x raw", "task tok/CPU-s", "x raw"], rows),
            f"{ex['target_tokens'] / 1e9:.0f}B tokens at {ex['tokens_per_core_s']:,.0f} tokens/core-s: "
            f"{ex['hours_one_node']:.1f} h on one {ex['node_cores']}-core node, "
            f"{ex['hours_n_nodes']:.1f} h on {ex['nodes']} nodes",
            "",
        ]
    if result.get("loader"):
        lines.append(format_table(["loader", "batches/s", "tokens/s"], [
            [f"B={ld['batch_size']} T={ld['seq_len']} num_workers={ld['num_workers']}", f"{ld['batches_per_s']:,.1f}",
             f"{ld['tokens_per_s']:,.0f}"] for ld in result["loader"]]))
    if result.get("loader_error"):
        lines.append(f"loader: {result['loader_error']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.data_bench",
        description="prepare's tokens per CPU-second vs raw encode_batch_fast, scaling with "
                    "--workers, hours for --target-tokens, and loader batches/s.",
    )
    p.add_argument("--corpus", nargs="+", default=[str(DEFAULT_CORPUS)],
                   help="corpus inputs, as for prepare --input (default: the shipped corpus)")
    p.add_argument("--tokenizer", nargs="+", default=[str(DEFAULT_TOKENIZER)],
                   help="tokenizer dirs or Hub names, each benchmarked (default: the shipped one); "
                        "e.g. also a Qwen3 tokenizer dir for a 150k vocabulary")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median; default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="prepare --workers settings to time (default 1 2)")
    p.add_argument("--tasks", type=int, default=None, help="prepare --tasks (default: max --workers)")
    p.add_argument("--target-tokens", type=float, default=117e9, help="extrapolate to this (default 117e9)")
    p.add_argument("--node-cores", type=int, default=64, help="cores per node (default 64)")
    p.add_argument("--nodes", type=int, default=8, help="nodes for the multi-node estimate (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="loader micro-batch (default 8)")
    p.add_argument("--seq-len", type=int, default=256, help="loader sequence length (default 256)")
    p.add_argument("--loader-batches", type=int, default=2000, help="batches timed per loader run")
    p.add_argument("--num-workers", type=int, nargs="*", default=[0],
                   help="loader DataLoader worker counts to time (default 0; none: skip the loader)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.workers) < 1:
        print("error: --workers values must be >= 1 (processes)", file=sys.stderr)
        return 2
    tasks = args.tasks or max(args.workers)
    with tempfile.TemporaryDirectory(prefix="data_prep_bench_") as tmp:
        work = Path(tmp)
        try:
            result: dict[str, Any] = {"prepare": [], "extrapolation": []}
            for k, tokenizer in enumerate(args.tokenizer):
                p = bench_prepare(args.corpus, tokenizer, args.repeats, work / str(k), tasks, args.workers)
                result["prepare"].append(p)
                result["extrapolation"].append(
                    extrapolate(p, args.target_tokens, args.node_cores, args.nodes))
        except ValueError as e:  # bad corpus / tokenizer: the message names the fix
            print(f"error: {e}", file=sys.stderr)
            return 2
        data = work / "0" / f"data_w{args.workers[0]}"
        result["loader"] = []
        try:
            result["loader"] = [bench_loader(data, args.batch_size, args.seq_len, args.loader_batches, w)
                                for w in args.num_workers]
        except Exception as e:  # the loader is benchmarked here but owned elsewhere: report, go on
            result["loader_error"] = f"{type(e).__name__}: {e}"
    print(format_result(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
