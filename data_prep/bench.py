"""Benchmark: prepare's tokens/s against the raw Rust encoder, and the loader's batches/s.

    python -m data_prep.bench                       # shipped corpus + tokenizer
    python -m data_prep.bench --json bench.json --repeats 5

"raw" is `Tokenizer.encode_batch_fast` over all documents of the same corpus in one call, the
ceiling for any pipeline built on it; "prepare" is the full pipeline (read, encode, pack, append,
fsync, commit the resume state per chunk). Both are timed alternately in the same process, and
the median of --repeats runs is reported, because a shared machine's speed drifts between runs.
Both rates count the same tokens (document tokens + one EOS each). The target is
prepare/raw >= 0.9. CPU seconds (all threads) are reported too: unlike wall-clock rates they hardly
move when other jobs share the machine. Rows for `--workers N` include starting the encoder
processes (about a second), which dominates on the small shipped corpus: time them on a bigger
one, e.g. a JSONL file manifest listing the corpus folder ten times.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_write_json
from .readers import ReadStats
from .sources import ReadOptions, iter_chunks, resolve_inputs

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
DEFAULT_CORPUS = ASSETS / "corpus"
DEFAULT_TOKENIZER = ASSETS / "tokenizer"
TARGET_RATIO = 0.9


def _cpu_seconds() -> float:
    # This process's threads plus reaped children (the encoder processes of --workers N).
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_prepare(corpus: Sequence[str], tokenizer: str, repeats: int, work: Path,
                  chunk_chars: int, workers: Sequence[int] = (0,)) -> dict[str, Any]:
    from .prepare import prepare
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    options = ReadOptions()
    units, _ = resolve_inputs(corpus, options)
    texts = [t for chunk in iter_chunks(units, options, ReadStats()) for t in chunk.texts]
    backend = tok.backend_tokenizer

    raw_rates, raw_cpu = [], []
    runs: dict[int, dict[str, list[float]]] = {w: {"loop": [], "e2e": [], "cpu": []} for w in workers}
    tokens = 0
    backend.encode_batch_fast(texts[:2000], add_special_tokens=False)  # warm the BPE cache
    for _ in range(repeats):  # alternate raw and prepare runs so drifting load hits both alike
        c0, t0 = _cpu_seconds(), time.perf_counter()
        encs = backend.encode_batch_fast(texts, add_special_tokens=False)
        dt, raw_cpu_s = time.perf_counter() - t0, _cpu_seconds() - c0
        tokens = sum(len(e.ids) for e in encs) + len(texts)  # + the EOS prepare appends
        del encs
        raw_rates.append(tokens / dt)
        raw_cpu.append(raw_cpu_s)
        for w in workers:
            c0 = _cpu_seconds()
            m = prepare(corpus, tok, work / "data", seq_len=256, val_fraction=0.05,
                        chunk_chars=chunk_chars, workers=w, overwrite=True, progress=False)
            st = m["stats"]
            produced = sum(s["tokens"] for s in m["splits"].values())
            if produced != tokens:
                raise RuntimeError(f"prepare wrote {produced} tokens, the raw encoder counted {tokens}")
            runs[w]["cpu"].append(_cpu_seconds() - c0)
            runs[w]["loop"].append(produced / st["session_loop_seconds"])
            runs[w]["e2e"].append(produced / st["session_total_seconds"])
    raw, raw_cpu_s = statistics.median(raw_rates), statistics.median(raw_cpu)
    modes = []
    for w in workers:
        loop, e2e, cpu = (statistics.median(runs[w][k]) for k in ("loop", "e2e", "cpu"))
        modes.append({
            "workers": w,
            "tokens_per_s": round(loop, 1),
            "end_to_end_tokens_per_s": round(e2e, 1),
            "ratio": round(loop / raw, 3),
            "ratio_end_to_end": round(e2e / raw, 3),
            # CPU seconds (all threads and workers) of one run: robust to other load on a shared
            # machine, where wall-clock rates drift. Includes prepare's setup and finalisation.
            "cpu_s": round(cpu, 3),
            "cpu_ratio": round(raw_cpu_s / cpu, 3),
            "runs": [round(r) for r in runs[w]["loop"]],
        })
    return {
        "documents": len(texts),
        "tokens": tokens,
        "characters": sum(map(len, texts)),
        "repeats": repeats,
        "chunk_chars": chunk_chars,
        "cpu_count": os.cpu_count(),
        "raw_tokens_per_s": round(raw, 1),
        "raw_cpu_s": round(raw_cpu_s, 3),
        "raw_runs": [round(r) for r in raw_rates],
        "modes": modes,
        "ratio": modes[0]["ratio"],  # of the first mode (default: workers=0, prepare's default)
        "target_ratio": TARGET_RATIO,
    }


def bench_loader(data_dir: Path, batch_size: int, seq_len: int, batches: int,
                 num_workers: int) -> dict[str, Any]:
    from .dataset import PackedTokenDataset, build_dataloader

    ds = PackedTokenDataset(data_dir, seq_len, "train", shuffle=True, seed=0)
    loader = build_dataloader(ds, batch_size, num_workers=num_workers)
    it = iter(loader)
    for _ in range(min(20, batches)):  # warm-up: worker start-up, page cache
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
    dt = time.perf_counter() - t0
    del it
    return {
        "num_workers": num_workers,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "batches": batches,
        "batches_per_s": round(batches / dt, 1),
        "tokens_per_s": round(batches * batch_size * seq_len / dt, 1),
    }


def format_table(result: dict[str, Any]) -> str:
    p = result["prepare"]
    rows = [
        f"corpus: {p['documents']:,} documents, {p['characters']:,} chars, {p['tokens']:,} tokens; "
        f"{p['cpu_count']} CPUs; median of {p['repeats']} runs; chunk {p['chunk_chars']:,} chars",
        f"{'measure':<42} {'tokens/s':>11} {'x raw':>6} {'CPU s':>7} {'x raw':>6}",
        f"{'raw encode_batch_fast':<42} {p['raw_tokens_per_s']:>11,.0f} {1.0:>6.2f} "
        f"{p['raw_cpu_s']:>7.3f} {1.0:>6.2f}",
    ]
    for m in p["modes"]:
        how = "threads" if m["workers"] == 0 else f"{m['workers']} encoder processes"
        rows.append(f"{'prepare, ' + how + ' (loop)':<42} {m['tokens_per_s']:>11,.0f} "
                    f"{m['ratio']:>6.2f} {m['cpu_s']:>7.3f} {m['cpu_ratio']:>6.2f}")
        rows.append(f"{'prepare, ' + how + ' (end to end)':<42} "
                    f"{m['end_to_end_tokens_per_s']:>11,.0f} {m['ratio_end_to_end']:>6.2f}")
    met = "MET" if p["ratio"] >= p["target_ratio"] else "NOT MET"
    rows += [
        f"target: prepare loop >= {p['target_ratio']} x raw (first mode) -> {met}",
        "",
        f"{'loader':<42} {'batches/s':>11} {'tokens/s':>14}",
    ]
    for ld in result["loader"]:
        name = f"B={ld['batch_size']} T={ld['seq_len']} num_workers={ld['num_workers']}"
        rows.append(f"{name:<42} {ld['batches_per_s']:>11,.1f} {ld['tokens_per_s']:>14,.0f}")
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.bench",
        description="Tokens/s of prepare vs the raw encode_batch_fast rate, and loader batches/s.",
    )
    p.add_argument("--corpus", nargs="+", default=[str(DEFAULT_CORPUS)],
                   help="corpus inputs (default: the shipped corpus)")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER),
                   help="tokenizer dir or Hub name (default: the shipped tokenizer)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (median reported; default 5)")
    p.add_argument("--chunk-chars", type=int, default=500_000, help="prepare chunk size (default 500000)")
    p.add_argument("--workers", type=int, nargs="+", default=[0],
                   help="prepare --workers settings to time (default 0: threads)")
    p.add_argument("--batch-size", type=int, default=8, help="loader micro-batch (default 8)")
    p.add_argument("--seq-len", type=int, default=256, help="loader sequence length (default 256)")
    p.add_argument("--loader-batches", type=int, default=2000, help="batches timed per loader run")
    p.add_argument("--num-workers", type=int, nargs="+", default=[0, 2],
                   help="loader DataLoader worker counts to time (default 0 2)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="data_prep_bench_") as tmp:
        work = Path(tmp)
        try:
            result: dict[str, Any] = {
                "prepare": bench_prepare(args.corpus, args.tokenizer, args.repeats, work,
                                         args.chunk_chars, args.workers),
                "loader": [
                    bench_loader(work / "data", args.batch_size, args.seq_len, args.loader_batches, w)
                    for w in args.num_workers
                ],
            }
        except ValueError as e:  # bad corpus / tokenizer: the message names the fix
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(format_table(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
