"""The data directory contract: token dtype, manifest.json, the checks every reader runs, and
`finalize`, which turns the per-task records of a `prepare` run into manifest.json.
The format, field by field, with the shards and the loader state: docs/formats.md, section 1.

A prepared data directory (manifest version 2):

    DIR/manifest.json                  written last (its presence means the directory is complete)
    DIR/tokenizer/                     the tokenizer, so DIR is self-contained (training copies it
                                       into checkpoints; eval and publishing load it from there)
    DIR/{split}/TTTTT_PPPPP.ds         tokens, raw little-endian `dtype` (datatrove TokenizedFile
                                       format); split in {train, val}; the manifest lists the files
    DIR/{split}/TTTTT_PPPPP.ds.index   uint64 little-endian CUMULATIVE document ends in tokens
                                       (datatrove's .index); last entry == the shard's tokens
    DIR/.prepare/                      run settings, per-task records, datatrove logs (resume state)

Every document is stored as `(BOS) tokens EOS`.

manifest.json (version "2.0"):

    version, pipeline        "2.0", "data_prep" (major bump = incompatible layout)
    created_utc              ISO timestamp
    dtype                    "uint16" | "uint32" (little-endian)
    tokenizer                name_or_path, class, vocab_size (= len(tokenizer), added tokens
                             included), bos/eos/pad _token and _id, sha256 (of tokenizer.json),
                             dir ("tokenizer", relative to DIR)
    eos_id, bos_id, add_bos  the separator after every document; bos_id is null unless add_bos
    seq_len                  the sequence length given to prepare (informational)
    splits.{train,val}       tokens, documents, max_token_id, shards: [{file, index, tokens,
                             documents, sha256, max_token_id}, ...] (paths relative to DIR; sha256
                             computed while writing)
    split_policy             val_fraction, seed, rule (a keyed hash of the document text)
    sources                  one entry per --input (kind local | glob | remote | file_manifest |
                             hub | saved_dataset)
    stats                    documents, records, skipped_empty_records, decode_replacements,
                             tasks, max_tokens, per-task budget, tasks short of their budget
    command                  argv of the prepare run
    warnings                 e.g. a split shorter than seq_len + 1, a budget not reached

Version 1 directories (DIR/train.bin + DIR/val.bin, `splits.{split}.file`) still load:
`load_manifest` returns them in the version 2 shape with one shard per split whose `index` is
null (a reader then finds documents by their EOS). No conversion is needed.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PIPELINE_VERSION = "2.0"
RUN_NAME = "run.json"  # DIR/.prepare/run.json: the settings every task and `finalize` read
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
# Explicitly little-endian, so shards written on one machine read the same on any other.
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_FIX = "re-run `python -m data_prep.prepare` for this directory (with --overwrite)"


class ManifestError(ValueError):
    """A data directory is missing, incomplete or corrupt; the message names the file and the fix."""


def dtype_for_vocab(vocab_size: int, requested: str = "auto") -> str:
    """Smallest dtype holding ids 0..vocab_size-1 ("auto"), or check that `requested` can.

    uint16 holds 65,536 ids (GPT-2 50,257; LLaMA-2 32,000); Qwen3 (151,669) and LLaMA-3 (128,256)
    need uint32. Halving the bytes per token halves disk and page-cache use, hence "auto".
    """
    if requested not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be auto, uint16 or uint32, got {requested!r}.")
    needed = "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"
    if vocab_size > np.iinfo(np.uint32).max + 1:
        raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit in uint32.")
    if requested == "auto":
        return needed
    if requested == "uint16" and needed == "uint32":
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but uint16 holds ids up to "
            f"{np.iinfo(np.uint16).max}: ids would wrap around. Use --dtype uint32 (or auto)."
        )
    return requested


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(data_dir: str | Path, *, verify_hash: bool = False) -> dict[str, Any]:
    """Read DIR/manifest.json (version 2, or version 1 normalised to the version 2 shape) and
    check every shard against it.

    Always checks that each shard exists and that its byte length equals tokens x dtype size, and
    that its .index holds one uint64 per document (a truncated or half-copied shard is caught
    before training reads garbage). `verify_hash=True` also re-hashes every shard against the
    manifest (reads every byte: slow on big corpora).
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        hint = ""
        if (data_dir / ".prepare" / RUN_NAME).exists() or (data_dir / "prepare_state.json").exists():
            hint = (" An unfinished run is there: re-run the same prepare command to resume it, or "
                    f"`python -m data_prep.prepare --out {data_dir} --finalize` to list what is missing.")
        raise ManifestError(
            f"no {MANIFEST_NAME} in {data_dir}: not a prepared data directory, or preparation did "
            f"not finish.{hint} Create it with `python -m data_prep.prepare --input ... --out {data_dir}`."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); {_FIX}.") from None
    for key in ("version", "dtype", "tokenizer", "splits"):
        if key not in manifest:
            raise ManifestError(f"{path} lacks the {key!r} field; {_FIX}.")
    major = str(manifest["version"]).split(".")[0]
    if major == "1":
        manifest = _from_v1(manifest)
    elif major != PIPELINE_VERSION.split(".")[0]:
        raise ManifestError(
            f"{path} has pipeline version {manifest['version']}, this code reads "
            f"{PIPELINE_VERSION} (and 1.x); {_FIX}."
        )
    if manifest["dtype"] not in DTYPES:
        raise ManifestError(f"{path}: unknown dtype {manifest['dtype']!r}; {_FIX}.")
    itemsize = np.dtype(DTYPES[manifest["dtype"]]).itemsize
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            _check_shard(data_dir, split, shard, itemsize, verify_hash)
    return manifest


def _check_shard(data_dir: Path, split: str, shard: dict[str, Any], itemsize: int,
                 verify_hash: bool) -> None:
    bin_path = data_dir / shard["file"]
    if not bin_path.is_file():
        raise ManifestError(f"{bin_path} (split {split!r}) is missing; {_FIX}.")
    expected = shard["tokens"] * itemsize
    actual = bin_path.stat().st_size
    if actual != expected:
        raise ManifestError(
            f"{bin_path} is truncated or corrupt: manifest says {shard['tokens']} tokens x "
            f"{itemsize} bytes = {expected} bytes, the file has {actual} bytes; {_FIX}."
        )
    if shard.get("index") is not None:
        index = data_dir / shard["index"]
        if not index.is_file() or index.stat().st_size != 8 * shard["documents"]:
            raise ManifestError(
                f"{index} is missing or does not hold {shard['documents']} document ends "
                f"(8 bytes each); {_FIX}."
            )
    if verify_hash and file_sha256(bin_path) != shard["sha256"]:
        raise ManifestError(f"{bin_path} is corrupt: its sha256 differs from the manifest's; {_FIX}.")


def _from_v1(m: dict[str, Any]) -> dict[str, Any]:
    """A version 1 manifest (one DIR/{split}.bin per split, no index) in the version 2 shape."""
    v2 = dict(m)
    v2["converted_from_version"] = m["version"]
    v2["version"] = PIPELINE_VERSION
    v2.setdefault("add_bos", m.get("bos_id") is not None)
    v2.setdefault("command", None)
    v2.setdefault("warnings", [])
    v2["splits"] = {}
    for split, info in m["splits"].items():
        shard = {"file": info["file"], "index": None, "tokens": info["tokens"],
                 "documents": info["documents"], "sha256": info.get("sha256"),
                 "max_token_id": info["max_token_id"]}
        v2["splits"][split] = {"tokens": info["tokens"], "documents": info["documents"],
                               "max_token_id": info["max_token_id"], "shards": [shard]}
    return v2


def finalize(out: str | Path, *, only_if_complete: bool = False) -> dict[str, Any] | None:
    """Write DIR/manifest.json from DIR/.prepare/run.json and the per-task records.

    Called by every task when it ends (`only_if_complete=True`: returns None while tasks are
    missing, so only the task that completes the set writes the manifest) and by
    `prepare --finalize` (raises, listing the missing tasks). Reads only the small JSON records
    (the shards' sha256 and counts were computed while writing) and stats the shard files.
    Idempotent; concurrent callers are serialised by a lock file.
    """
    from .atomic import atomic_write_json

    out = Path(out)
    state = out / ".prepare"
    run_path = state / RUN_NAME
    if not run_path.is_file():
        raise ManifestError(
            f"{out} holds no prepare run ({run_path} is missing): nothing to finalize. Start one with "
            f"`python -m data_prep.prepare --input ... --out {out}`."
        )
    run = json.loads(run_path.read_text())
    tasks = run["tasks"]
    with open(state / "finalize.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two tasks may finish the set at the same moment
        records, missing = [], []
        for t in range(tasks):
            p = state / "tasks" / f"{t:05d}.json"
            if p.is_file():
                records.append(json.loads(p.read_text()))
            else:
                missing.append(t)
        if missing:
            if only_if_complete:
                return None
            raise ManifestError(_missing_message(out, run, missing))
        manifest = _merge(out, run, records)
        atomic_write_json(out / MANIFEST_NAME, manifest)
    for w in manifest["warnings"]:
        log.warning(w)
    return manifest


def _missing_message(out: Path, run: dict[str, Any], missing: list[int]) -> str:
    tasks, nodes = run["tasks"], run.get("num_nodes", 1)
    owners = sorted({next(r for r in range(nodes) if t < (r + 1) * tasks // nodes) for t in missing})
    shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
    return (
        f"{out}: {len(missing)} of {tasks} tasks have not finished (tasks {shown}; their shards are "
        f"not written). Run (or rerun) the same prepare command on node rank(s) {owners} of "
        f"{nodes} (`--node-rank R --num-nodes {nodes}`); finished tasks are skipped."
    )


def _merge(out: Path, run: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    from .readers import CorpusError

    itemsize = np.dtype(DTYPES[run["dtype"]]).itemsize
    splits: dict[str, Any] = {}
    for split in run["splits"]:
        shards = [s for r in records for s in r["splits"].get(split, [])]
        for shard in shards:  # cheap stat per shard, no reading
            _check_shard(out, split, shard, itemsize, verify_hash=False)
        splits[split] = {
            "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
            "max_token_id": max((s["max_token_id"] for s in shards), default=-1),
            "shards": shards,
        }
    documents = sum(s["documents"] for s in splits.values())
    records_read = sum(r["records"] for r in records)
    if documents == 0:
        raise CorpusError(
            f"the corpus is empty: no documents in {run['inputs']} ({records_read} records, all "
            "blank). Check --input, --text-field and --sample-by."
        )
    warnings = list(run.get("warnings", []))
    seq_len = run["seq_len"]
    for split, info in splits.items():
        if info["tokens"] < seq_len + 1:
            warnings.append(
                f"split {split!r} has {info['tokens']} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                "it cannot yield a single sample at this seq_len (use more data, a larger "
                "--val-fraction, or a shorter --seq-len)."
            )
    short = [r["task"] for r in records if r["budget"] is not None and not r["budget_reached"]]
    if run.get("max_tokens") is not None and short:
        warnings.append(
            f"--max-tokens {run['max_tokens']:.0f}: {len(short)} of {run['tasks']} tasks ran out of "
            f"input before their budget of {records[0]['budget']} tokens, so train holds "
            f"{splits['train']['tokens']} tokens. Add input files (each task reads every "
            f"{run['tasks']}-th file) or use fewer --tasks."
        )
    return {
        "version": PIPELINE_VERSION,
        "pipeline": "data_prep",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": run["dtype"],
        "tokenizer": run["tokenizer"],
        "eos_id": run["eos_id"],
        "bos_id": run["bos_id"],
        "add_bos": run["bos_id"] is not None,
        "seq_len": seq_len,
        "layout": "(BOS) document EOS per document; shards in task order",
        "splits": splits,
        "split_policy": run["split_policy"],
        "sources": run["sources"],
        "read_options": run["read_options"],
        "stats": {
            "documents": documents,
            "records": records_read,
            "skipped_empty_records": sum(r["skipped_empty"] for r in records),
            "decode_replacements": sum(r["decode_replacements"] for r in records),
            "decode_replacement_examples": [e for r in records for e in r["decode_replacement_examples"]][:5],
            "tasks": run["tasks"],
            "max_tokens": run.get("max_tokens"),
            "task_budget": records[0]["budget"],
            "tasks_short_of_budget": short,
            "shard_tokens": run["shard_tokens"],
            # Summed over tasks (each in its own process when --workers > 1): for throughput
            # estimates, tokens / task_cpu_seconds is the rate per core.
            "task_seconds": round(sum(r.get("seconds", 0.0) for r in records), 3),
            "task_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in records), 3),
        },
        "command": run["command"],
        "warnings": warnings,
    }


VOCAB_MULTIPLE = 128  # embedding rows are padded up to a multiple of this (tensor-core friendly matmul shapes)


def model_vocab_size(manifest: dict[str, Any], multiple: int = VOCAB_MULTIPLE) -> int:
    """The model vocabulary for this data when the recipe sets none: the tokenizer's length padded up to
    a multiple of 128 (GPT-2's 50257 -> 50304 as in nanoGPT). Training, the sweep and the benchmarks use it."""
    return -(-int(manifest["tokenizer"]["vocab_size"]) // multiple) * multiple


def check_vocab_compat(manifest: dict[str, Any], vocab_size: int) -> None:
    """Raise if the data holds token ids the model's embedding table cannot index.

    The model may be larger (vocabularies are often padded up to a multiple of 64 or 128 for
    matmul efficiency); it must not be smaller, or the embedding lookup fails (or, on GPU, reads
    out of bounds with an unhelpful device-side assert).
    """
    tok_vocab = int(manifest["tokenizer"]["vocab_size"])
    if tok_vocab > vocab_size:
        raise ValueError(
            f"vocabulary mismatch: the data was tokenized with {manifest['tokenizer']['name_or_path']!r} "
            f"which has {tok_vocab} tokens, but the model's vocab_size is {vocab_size}. "
            f"Set the model's vocab_size >= {tok_vocab} (e.g. {model_vocab_size(manifest)}, padded "
            f"to a multiple of {VOCAB_MULTIPLE}), or re-prepare the data with the model's tokenizer."
        )
