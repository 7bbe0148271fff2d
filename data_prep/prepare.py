"""Corpus -> token shards + manifest, on datatrove: one machine, many machines, Slurm or Ray.

    python -m data_prep.prepare --input tests/assets/corpus --tokenizer tests/assets/tokenizer \\
        --out data/shakespeare --seq-len 128 --val-fraction 0.05

    # SlimPajama -> ~117B Qwen3 tokens on one 64-core node (512 tasks, 64 at a time):
    python -m data_prep.prepare --input 'hf://datasets/cerebras/SlimPajama-627B/train/**/*.jsonl.zst' \\
        --tokenizer Qwen/Qwen3-1.7B --out data/slimpajama_qwen3 --seq-len 2048 --val-fraction 0.0005 \\
        --max-tokens 117e9 --tasks 512 --workers 64
    # ... or on 8 nodes: the same command on each, plus --node-rank R --num-nodes 8 (no coordination;
    # the node that finishes the last task writes the manifest; `--out DIR --finalize` checks/writes it).
    # ... or on Slurm: --executor slurm --slurm-partition P --slurm-time 24:00:00 (one array job).

How it works: the corpus is cut into `--tasks` tasks (task t reads every tasks-th file and a
1/tasks share of each Hub dataset, `sources.shard_units`). A datatrove executor runs the tasks
(`--workers` processes at a time on this machine; `--node-rank r --num-nodes n` runs the r-th
contiguous block of tasks; Slurm/Ray schedule them on a cluster). Each task tokenizes its documents
into bounded-size shards DIR/{split}/TTTTT_PPPPP.ds + .index (`pipeline.TokenizeToShards`) and
records them in DIR/.prepare/tasks/TTTTT.json; the task that completes the set writes manifest.json
(`manifest.finalize`). Resume = rerun the same command: finished tasks are skipped (datatrove's
completion markers), an interrupted task starts over and, being deterministic, writes the same bytes.

Documents are encoded without the tokenizer's own special tokens (`add_special_tokens=False`),
then the separator is appended to each (and BOS prepended when the family expects it), so the
layout is the same for every tokenizer family. The separator is the tokenizer's end-of-text token:
a chat tokenizer whose eos ends a turn (Qwen's <|im_end|>, Llama-3-Instruct's <|eot_id|>) gets its
end-of-text token instead (<|endoftext|>, <|end_of_text|>). Train/val: splits the source already
has are kept; otherwise a document goes to val iff a hash of (seed, its text) < val_fraction, so
the split never depends on positions, tasks or machines. `--max-tokens T` gives each task a budget
of ceil(T / tasks) train tokens; a task stops after the document that reaches it.

One module (~520 lines): the run's contract (start, resume, refuse a changed run, finalize) and its CLI
are one story a reader follows top to bottom; the steps themselves live in pipeline.py and shards.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .atomic import atomic_write_json
from .manifest import DTYPES, MANIFEST_NAME, RUN_NAME, SPLITS, dtype_for_vocab, finalize
from .pipeline import STATE_DIR, ReadCorpus, TokenizeToShards, task_record_path
from .readers import SAMPLE_BY, CorpusError
from .sources import ReadOptions, resolve_inputs
from .tokenizer import load_tokenizer, save_tokenizer, tokenizer_identity

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
EXECUTORS = ("local", "slurm", "ray")
# Chat-turn end markers configured as eos by chat tokenizers -> the same family's end-of-text
# token, which is what separates pre-training documents (and what the base models were trained on).
CHAT_EOS_TO_DOCUMENT_EOS = {
    "<|im_end|>": "<|endoftext|>",  # Qwen2/2.5/3
    "<|eot_id|>": "<|end_of_text|>",  # Llama-3 Instruct
    "<end_of_turn>": "<eos>",  # Gemma
}
DEFAULT_SHARD_TOKENS = 1 << 28  # 268M tokens: 512 MiB (uint16) / 1 GiB (uint32) per shard


def resolve_separator(tok: Any, eos_token: str | None) -> tuple[str, int, list[str]]:
    """The document separator (token, id) and notes for the manifest.

    The caller's tokenizer is left alone; the copy in DIR/tokenizer/ names the separator as its
    eos (`save_tokenizer(..., eos_token=)`), so the data directory says what the data holds.
    """
    notes: list[str] = []
    backend = tok.backend_tokenizer  # token_to_id: no 150k-entry get_vocab() dict per lookup
    if eos_token is None and tok.eos_token in CHAT_EOS_TO_DOCUMENT_EOS:
        doc_eos = CHAT_EOS_TO_DOCUMENT_EOS[tok.eos_token]
        if backend.token_to_id(doc_eos) is not None:
            notes.append(f"the tokenizer's eos {tok.eos_token!r} ends a chat turn; documents are "
                         f"separated by its end-of-text token {doc_eos!r} instead (--eos-token overrides)")
            log.info(notes[-1])
            eos_token = doc_eos
    if eos_token is None:
        if tok.eos_token_id is None:
            raise ValueError(
                f"tokenizer {tok.name_or_path!r} has no eos_token, which prepare appends after every "
                "document. Pass --eos-token with a token of its vocabulary."
            )
        return tok.eos_token, int(tok.eos_token_id), notes
    eos_id = backend.token_to_id(eos_token)
    if eos_id is None:
        raise ValueError(f"--eos-token {eos_token!r} is not in the tokenizer's vocabulary.")
    return eos_token, int(eos_id), notes


def expects_bos(tok: Any) -> bool:
    """Whether the tokenizer's own encoding starts documents with BOS (Llama-2/3: yes; GPT-2,
    Qwen: no): prepare then prepends it too, so the data looks like what the family was trained on."""
    if tok.bos_token_id is None:
        return False
    with_special = tok("a", add_special_tokens=True).input_ids
    return bool(with_special) and with_special[0] == tok.bos_token_id and \
        tok("a", add_special_tokens=False).input_ids[:1] != [tok.bos_token_id]


def node_tasks(tasks: int, node_rank: int, num_nodes: int) -> range:
    """The contiguous block of tasks node `node_rank` of `num_nodes` runs (datatrove's
    local_rank_offset / local_tasks)."""
    return range(node_rank * tasks // num_nodes, (node_rank + 1) * tasks // num_nodes)


def prepare(
    inputs: Sequence[str],
    tokenizer: str | Any,
    out_dir: str | Path,
    *,
    seq_len: int,
    val_fraction: float = 0.01,
    seed: int = 0,
    read_options: ReadOptions = ReadOptions(),
    eos_token: str | None = None,
    add_bos: bool | None = None,
    dtype: str = "auto",
    max_tokens: float | None = None,
    tasks: int | None = None,
    workers: int = 1,
    node_rank: int = 0,
    num_nodes: int = 1,
    executor: str = "local",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_chars: int = 1_000_000,
    executor_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    command: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `inputs` into `out_dir`; returns the manifest, or a status dict when this node
    finished its tasks but others are still missing (`{"complete": False, "missing_tasks": [...]}`).

    `tokenizer`: a local directory, a Hub name, or an already loaded fast tokenizer. `add_bos`:
    None = what the family's tokenizer does (`expects_bos`). `tasks`: default `workers`; keep it
    fixed across reruns and nodes (it decides which documents each task and shard holds).
    `chunk_chars`: characters per tokenization batch (memory: a few batches per worker).
    Rerunning with the same arguments resumes; different arguments are refused (`overwrite`).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (processes on this machine), got {workers}.")
    tasks = workers if tasks is None else tasks
    if tasks < 1:
        raise ValueError(f"tasks must be >= 1, got {tasks}.")
    if not (num_nodes >= 1 and 0 <= node_rank < num_nodes):
        raise ValueError(f"--node-rank must be in [0, --num-nodes), got {node_rank} of {num_nodes}.")
    if overwrite and node_rank > 0:
        raise ValueError(f"--overwrite on node rank {node_rank}: only node rank 0 clears --out (another node's clearing "
                         "would delete shards node 0 already wrote); start node 0 with --overwrite, the others without")
    if num_nodes > tasks:
        raise ValueError(f"--num-nodes {num_nodes} > --tasks {tasks}: some nodes would have no task. "
                         f"Use --tasks >= {num_nodes} (e.g. {num_nodes * 64}).")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}.")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}.")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}.")
    t_start = time.perf_counter()

    # Inputs first: a typo in a path should fail before a large tokenizer is loaded.
    units, sources = resolve_inputs(inputs, read_options)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    sep_token, eos_id, notes = resolve_separator(tok, eos_token)
    if add_bos is None:
        add_bos = expects_bos(tok)
    if add_bos and tok.bos_token_id is None:
        raise ValueError(f"--add-bos: tokenizer {tok.name_or_path!r} has no bos_token.")
    ident = {**tokenizer_identity(tok), "eos_token": sep_token, "eos_id": eos_id}
    dtype_name = dtype_for_vocab(ident["vocab_size"], dtype)
    bos_id = int(tok.bos_token_id) if add_bos else None
    has_val = val_fraction > 0 or any(u.split == "val" for u in units)
    splits = [s for s in SPLITS if s == "train" or has_val]
    task_budget = None if max_tokens is None else math.ceil(max_tokens / tasks)

    run = {
        # What determines the output bytes: a resumed run (or another node) must agree on these.
        "fingerprint": {
            "units": [u.identity() for u in units],
            "read_options": dataclasses.asdict(read_options),
            "tokenizer_sha256": ident["sha256"],
            "val_fraction": val_fraction, "seed": seed, "eos_id": eos_id, "add_bos": add_bos,
            "dtype": dtype_name, "splits": splits, "tasks": tasks, "max_tokens": max_tokens,
            "shard_tokens": shard_tokens, "seq_len": seq_len,
        },
        "tasks": tasks, "num_nodes": num_nodes, "splits": splits, "dtype": dtype_name,
        "tokenizer": {**ident, "dir": TOKENIZER_DIR}, "eos_id": eos_id, "bos_id": bos_id,
        "seq_len": seq_len, "max_tokens": max_tokens, "shard_tokens": shard_tokens,
        "inputs": list(inputs), "sources": sources,
        "read_options": {"text_field": read_options.text_field, "sample_by": read_options.sample_by},
        "split_policy": {
            "val_fraction": val_fraction, "seed": seed,
            "rule": "the source's split when it has one; else val iff blake2b-64(text, key=str(seed)) "
                    "/ 2**64 < val_fraction (data_prep.shards.doc_to_val)",
        },
        "command": command if command is not None else ["python", "-m", "data_prep.prepare", "(API call)"],
        "warnings": notes,
    }

    out = Path(out_dir)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    with _exclusive(out, node_rank):
        _start_or_resume(out, run, tok, sep_token, overwrite, clear=node_rank == 0)
        reader = ReadCorpus(units, read_options)
        writer = TokenizeToShards(
            str(out.resolve()), tok.backend_tokenizer.to_str(), reader, dtype=DTYPES[dtype_name].name,
            eos_id=eos_id, bos_id=bos_id, splits=splits, seed=seed, val_fraction=val_fraction,
            shard_tokens=shard_tokens, task_budget=task_budget, batch_chars=chunk_chars,
            threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0, progress=progress,
        )
        mine = node_tasks(tasks, node_rank, num_nodes)
        ex = _executor(executor, [reader, writer], out, tasks, workers, mine, executor_options or {})
        if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "no", "off"):
            log.warning("TOKENIZERS_PARALLELISM=%s: each task encodes on one core",
                        os.environ["TOKENIZERS_PARALLELISM"])
        t_loop = time.perf_counter()
        global _RUNNING_EXECUTOR
        _RUNNING_EXECUTOR = True
        try:
            ex.run()  # the console: warnings and a line per task (pipeline.route_datatrove_console)
        finally:
            _RUNNING_EXECUTOR = False
        seconds = time.perf_counter() - t_loop
        if executor == "local":
            # A task that finished in an earlier session (or on a node that died before writing
            # the manifest) leaves the set complete without a finishing task now: finalize here.
            manifest = finalize(out, only_if_complete=True)
        else:
            manifest = None
        if manifest is None:
            missing = [t for t in range(tasks) if not task_record_path(out, t).exists()]
            return {"complete": False, "missing_tasks": missing, "node_rank": node_rank,
                    "num_nodes": num_nodes, "executor": executor, "out": str(out)}
        manifest["stats"]["session"] = {
            "node_rank": node_rank, "workers": workers, "loop_seconds": round(seconds, 3),
            "total_seconds": round(time.perf_counter() - t_start, 3),
        }
        return manifest


@contextlib.contextmanager
def _exclusive(out: Path, node_rank: int) -> Iterator[None]:
    """Refuse a second prepare for the same node writing into the same directory at once (other
    nodes of a multi-node run use their own lock: they write disjoint tasks)."""
    lock = out / STATE_DIR / f"lock-node{node_rank}"
    with open(lock, "w") as f:
        try:
            # A POSIX record lock, not flock: it is not inherited by forked children (datatrove's
            # manager process), so a SIGKILLed run never leaves the lock held behind it.
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CorpusError(
                f"another prepare process (node rank {node_rank}) is writing to {out} (it holds "
                f"{lock}). Wait for it to finish, or use another --out directory."
            ) from None
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def _die_with_parent() -> None:
    """Forked helpers (datatrove's multiprocess manager) get SIGTERM when prepare dies.

    Without it, a prepare killed with SIGKILL (OOM killer, preemption) leaves the manager
    process running forever. Only while `prepare` runs its executor (other programs importing
    this module keep their fork semantics). Linux only (prctl); elsewhere a no-op.
    """
    if not _RUNNING_EXECUTOR:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_RUNNING_EXECUTOR = False
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_die_with_parent)


def _changed(old: dict, new: dict) -> list[str]:
    def canon(v: Any) -> str:
        return json.dumps(v, sort_keys=True, default=str)

    return sorted(k for k in set(old) | set(new) if canon(old.get(k)) != canon(new.get(k)))


def _start_or_resume(out: Path, run: dict[str, Any], tok: Any, sep_token: str, overwrite: bool, clear: bool) -> None:
    """Resume a run with the same settings, refuse one with others, or start afresh. `clear`: this node may
    delete what an earlier run left (node 0 only: the others may start while node 0 is writing)."""
    run_path = out / STATE_DIR / RUN_NAME
    fresh = json.loads(json.dumps(run, default=str))  # as it will read back from disk
    if not overwrite and run_path.is_file():
        old = json.loads(run_path.read_text())
        changed = _changed(old["fingerprint"], fresh["fingerprint"])
        if changed:
            what = "a prepared dataset" if (out / MANIFEST_NAME).exists() else "an interrupted run"
            raise CorpusError(
                f"{out} holds {what} with different settings (changed: {changed}). Re-run with the "
                "original arguments to resume it, pass --overwrite to start over, or use another "
                "--out directory."
            )
        if (out / MANIFEST_NAME).exists():
            raise CorpusError(
                f"{out} already holds a prepared dataset ({MANIFEST_NAME} exists). Pass --overwrite "
                "to rebuild it, or choose another --out directory."
            )
        log.info("resuming %s: finished tasks are skipped", out)
        return
    if not overwrite and (out / MANIFEST_NAME).exists():
        raise CorpusError(
            f"{out} already holds a prepared dataset ({MANIFEST_NAME} exists). Pass --overwrite to "
            "rebuild it, or choose another --out directory."
        )
    if not clear:  # a fresh directory (no run, no manifest) seen first by another node: nothing to delete
        save_tokenizer(tok, out / TOKENIZER_DIR, eos_token=sep_token)
        atomic_write_json(run_path, fresh)
        return
    # Fresh start: the manifest goes first, so the directory never claims to be complete while
    # old shards are being replaced; old v1 files go too.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in ("train.bin", "val.bin", "prepare_state.json"):
        (out / name).unlink(missing_ok=True)
    for d in [*SPLITS, TOKENIZER_DIR]:
        shutil.rmtree(out / d, ignore_errors=True)
    for d in ("tasks", "datatrove"):
        shutil.rmtree(out / STATE_DIR / d, ignore_errors=True)
    save_tokenizer(tok, out / TOKENIZER_DIR, eos_token=sep_token)
    atomic_write_json(run_path, fresh)  # last: its presence means "a run with these settings"


def _executor(kind: str, pipeline: list, out: Path, tasks: int, workers: int, mine: range,
              options: dict[str, Any]) -> Any:
    logging_dir = str((out / STATE_DIR / "datatrove").resolve())
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, len(mine)), logging_dir=logging_dir,
            local_tasks=len(mine), local_rank_offset=mine.start,
        )
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not options.get("partition"):
            raise ValueError("--executor slurm needs --slurm-partition NAME (and --slurm-time).")
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=options.get("time", "24:00:00"), partition=options["partition"],
            cpus_per_task=options.get("cpus_per_task", 1), mem_per_cpu_gb=options.get("mem_per_cpu_gb", 2),
            workers=options.get("max_parallel", -1), job_name="data_prep", logging_dir=logging_dir,
            venv_path=options.get("venv_path"),
        )
    try:
        import ray  # noqa: F401
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise ValueError("--executor ray needs the `ray` package: pip install 'ray[default]' (then "
                         "`ray start --head` / `ray start --address ...` on the nodes).") from None
    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                               cpus_per_task=options.get("cpus_per_task", 1))


def format_summary(manifest: dict[str, Any], out: Path) -> str:
    tok = manifest["tokenizer"]
    st = manifest["stats"]
    rows = [f"{'split':<6} {'documents':>11} {'tokens':>15} {'shards':>7} {'GB':>8}"]
    itemsize = DTYPES[manifest["dtype"]].itemsize
    for split, info in manifest["splits"].items():
        rows.append(f"{split:<6} {info['documents']:>11,} {info['tokens']:>15,} "
                    f"{len(info['shards']):>7} {info['tokens'] * itemsize / 1e9:>8.3f}")
    sess = st.get("session", {})
    rows += [
        f"tokenizer  {tok['name_or_path']} (len {tok['vocab_size']:,}, eos id {manifest['eos_id']}"
        f"{', bos id ' + str(manifest['bos_id']) if manifest['bos_id'] is not None else ''}) "
        f"-> {out / tok['dir']}",
        f"dtype      {manifest['dtype']}   seq_len {manifest['seq_len']}   tasks {st['tasks']}",
    ]
    if sess.get("loop_seconds"):
        total = sum(i["tokens"] for i in manifest["splits"].values())
        rows.append(f"speed      {total / sess['loop_seconds'] / 1e6:.2f}M tokens/s "
                    f"({total:,} tokens in {sess['loop_seconds']:.2f}s, this session)")
    rows.append(f"skipped    {st['skipped_empty_records']} empty records; "
                f"{st['decode_replacements']} undecodable byte sequences replaced")
    rows += [f"WARNING    {w}" for w in manifest["warnings"]]
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Tokenize a corpus into token shards + manifest.json with datatrove (resumable: "
                    "rerun the same command to continue; several machines: --node-rank/--num-nodes).",
    )
    p.add_argument("--input", nargs="+", metavar="FILE_DIR_GLOB_URL_OR_DATASET",
                   help=".txt/.jsonl(.zst/.gz)/.parquet files, directories or globs of them, fsspec "
                        "URLs (hf://datasets/cerebras/SlimPajama-627B/train/**/*.jsonl.zst, s3://...), "
                        'a JSONL manifest of files ({"path": ..., "split": ...} per line), a '
                        "save_to_disk folder, or a Hub dataset name (e.g. roneneldan/TinyStories)")
    p.add_argument("--tokenizer", metavar="DIR_OR_NAME",
                   help="tokenizer directory or Hub name (gpt2, meta-llama/Llama-2-7b-hf, "
                        "meta-llama/Meta-Llama-3-8B, Qwen/Qwen3-1.7B)")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    p.add_argument("--seq-len", type=int,
                   help="training sequence length (recorded; each split is checked to hold one sample)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="fraction of documents carved out for validation when the source has no "
                        "validation split (default 0.01; 0 = everything in train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val carve-out (default 0)")
    p.add_argument("--max-tokens", type=float, default=None, metavar="T",
                   help="stop after about T train tokens (e.g. 117e9): each task gets ceil(T/tasks) "
                        "and stops after the document that reaches it")
    p.add_argument("--text-field", default="text", help="JSONL/Parquet/Hub text field (default text)")
    p.add_argument("--sample-by", choices=SAMPLE_BY, default="paragraph",
                   help=".txt documents: paragraph (blank-line separated, default), line, document "
                        "(whole file)")
    p.add_argument("--dataset-config", default=None, help="Hub dataset configuration name")
    p.add_argument("--split", default=None,
                   help="Hub split to read (default: train, plus its validation split if any)")
    p.add_argument("--val-split", default=None,
                   help="Hub split used as validation (default: validation/valid/val/dev if present)")
    p.add_argument("--streaming", action="store_true",
                   help="stream the Hub dataset instead of downloading it (corpora bigger than disk)")
    p.add_argument("--eos-token", default=None,
                   help="document separator (default: the tokenizer's end-of-text token; a chat eos "
                        "such as Qwen's <|im_end|> is replaced by <|endoftext|>)")
    p.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend BOS to every document (default: when the tokenizer itself does, "
                        "e.g. Llama-2/3; not GPT-2/Qwen)")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="token dtype (default auto: uint16 if the vocabulary fits, else uint32)")
    p.add_argument("--tasks", type=int, default=None,
                   help="number of tasks the corpus is cut into (default: --workers). Fixes which "
                        "documents each shard holds: keep it the same on every node and rerun")
    p.add_argument("--workers", type=int, default=1,
                   help="tasks run at the same time on this machine, one process each (default 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's rank (default 0)")
    p.add_argument("--num-nodes", type=int, default=1,
                   help="machines running the same command; node r runs its contiguous block of tasks")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local (default: this machine), slurm (submits an array job of --tasks), "
                        "ray (a running Ray cluster)")
    p.add_argument("--slurm-partition", default=None, help="--executor slurm: partition")
    p.add_argument("--slurm-time", default="24:00:00", help="--executor slurm: time limit per task")
    p.add_argument("--slurm-cpus-per-task", type=int, default=4,
                   help="--executor slurm/ray: CPUs per task (default 4)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                   help=f"max tokens per shard file (default {DEFAULT_SHARD_TOKENS:,}; a longer "
                        "document gets a shard of its own)")
    p.add_argument("--chunk-chars", type=int, default=1_000_000,
                   help="characters per tokenization batch (default 1000000)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if DIR holds a finished or interrupted run (several nodes: on node rank 0 only, "
                        "started first)")
    p.add_argument("--finalize", action="store_true",
                   help="only write DIR/manifest.json from the finished tasks, or list the missing ones")
    p.add_argument("--json", metavar="FILE", help="also write the manifest to FILE")
    p.add_argument("--no-progress", action="store_true", help="no per-task progress lines")
    return p


def _activate_script() -> str | None:
    script = Path(sys.prefix) / "bin" / "activate"
    return str(script) if sys.prefix != sys.base_prefix and script.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.finalize:
            manifest: dict[str, Any] | None = finalize(args.out)
        else:
            missing = [f for f, v in (("--input", args.input), ("--tokenizer", args.tokenizer),
                                      ("--seq-len", args.seq_len)) if v is None]
            if missing:
                print(f"error: {', '.join(missing)} required (or --finalize with --out)", file=sys.stderr)
                return 2
            read_options = ReadOptions(
                text_field=args.text_field, sample_by=args.sample_by, dataset_config=args.dataset_config,
                split=args.split, val_split=args.val_split, streaming=args.streaming,
            )
            manifest = prepare(
                args.input, args.tokenizer, args.out, seq_len=args.seq_len,
                val_fraction=args.val_fraction, seed=args.seed, read_options=read_options,
                eos_token=args.eos_token, add_bos=args.add_bos, dtype=args.dtype,
                max_tokens=args.max_tokens, tasks=args.tasks, workers=args.workers,
                node_rank=args.node_rank, num_nodes=args.num_nodes, executor=args.executor,
                shard_tokens=args.shard_tokens, chunk_chars=args.chunk_chars,
                executor_options={"partition": args.slurm_partition, "time": args.slurm_time,
                                  "cpus_per_task": args.slurm_cpus_per_task,
                                  # datatrove's sbatch script `source`s this before each task
                                  "venv_path": _activate_script()},
                overwrite=args.overwrite, command=["python", "-m", "data_prep.prepare", *argv],
                progress=not args.no_progress,
            )
    except ValueError as e:  # CorpusError, TokenizerError, ManifestError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    if manifest is None or not manifest.get("splits"):
        status = manifest or {}
        print(f"node {status.get('node_rank', 0)} of {status.get('num_nodes', 1)}: its tasks are done"
              if args.executor == "local" else f"{args.executor}: tasks submitted")
        print(f"{len(status.get('missing_tasks', []))} tasks still missing; the node finishing the last "
              f"one writes {Path(args.out) / MANIFEST_NAME} (check with --out {args.out} --finalize)")
        return 0
    print(format_summary(manifest, Path(args.out)))
    print(f"wrote {Path(args.out) / MANIFEST_NAME}")
    if args.json:
        atomic_write_json(args.json, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
