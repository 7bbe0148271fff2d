"""Corpus -> token shards + manifest: tokenize in parallel, append EOS per document, pack, resume.

    python -m data_prep.prepare --input tests/assets/corpus --tokenizer tests/assets/tokenizer \\
        --out data/shakespeare --seq-len 128 --val-fraction 0.05

    python -m data_prep.prepare --input HuggingFaceFW/fineweb-edu --dataset-config sample-10BT \\
        --streaming --tokenizer gpt2 --out data/fineweb10B --seq-len 1024 --val-fraction 0.0005

How it works (one chunk of documents at a time, so memory is bounded on corpora larger than RAM):
  main thread:  read chunk k+2 | pack chunk k, append to DIR/{train,val}.bin.partial
  pool threads: encode chunks k+1 and k+2 (Rust, all cores, GIL released)
Every `--commit-every` seconds (and at the end) the partial files are fsync'ed and then
prepare_state.json is replaced atomically; it holds the reader cursor, the number of documents
seen and the committed byte length of each partial file. A rerun with the same arguments
truncates the partial files to those lengths (dropping chunks written after the last commit) and
continues from the cursor: no document is duplicated or lost, and the shards are byte-identical
to an uninterrupted run. When the corpus is done, the partial files are renamed, the tokenizer
is copied to DIR/tokenizer/, and manifest.json is written last (its presence = complete).

Documents are encoded without the tokenizer's own special tokens (`add_special_tokens=False`),
then EOS is appended to each (and BOS prepended with --add-bos), so the layout is the same for
every tokenizer family. Train/val: splits the source already has are kept; otherwise document i
goes to val iff hash(seed, i) < val_fraction.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from .atomic import atomic_write_json
from .encoding import ProcessEncoder, ThreadEncoder, encode_ahead
from .manifest import DTYPES, MANIFEST_NAME, PIPELINE_VERSION, SPLITS, dtype_for_vocab, file_sha256
from .readers import SAMPLE_BY, CorpusError, ReadStats
from .shards import STATE_NAME, ShardWriter, bin_name, partial_name
from .sources import Chunk, Cursor, ReadOptions, count_known_documents, iter_chunks, resolve_inputs
from .tokenizer import load_tokenizer, save_tokenizer, tokenizer_identity

log = logging.getLogger(__name__)

LOCK_NAME = ".prepare.lock"
TOKENIZER_DIR = "tokenizer"
# Chunks being encoded while the previous one is written (memory: about ENCODE_DEPTH + 2 chunks).
ENCODE_DEPTH = int(os.environ.get("DATA_PREP_ENCODE_DEPTH", "2"))


def _fingerprint(units: list, options: ReadOptions, ident: dict, settings: dict) -> dict[str, Any]:
    """Everything that determines the output bytes: a resume must see the same values."""
    return {
        "units": [u.identity() for u in units],
        "read_options": {
            "text_field": options.text_field,
            "sample_by": options.sample_by,
            "dataset_config": options.dataset_config,
            "split": options.split,
            "val_split": options.val_split,
            "streaming": options.streaming,
        },
        "tokenizer_sha256": ident["sha256"],
        **settings,
    }


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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
    add_bos: bool = False,
    dtype: str = "auto",
    chunk_chars: int = 500_000,
    commit_every_s: float = 2.0,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `inputs` into `out_dir` (train.bin, val.bin, manifest.json, tokenizer/).

    Resumes an interrupted run in `out_dir` with the same arguments. Returns the manifest.
    `tokenizer` is a local directory, a Hub name, or an already loaded fast tokenizer.
    `commit_every_s`: the resume state is committed (shards fsync'ed, then the state file
    written) at most this often, and always at the end; 0 commits after every chunk.
    `workers`: 0 encodes on threads of this process; N > 0 uses N encoder processes (many-core
    machines, see data_prep.encoding). The output bytes are the same either way.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}.")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}.")
    t_start = time.perf_counter()

    # Inputs first: a typo in a path should fail before a large tokenizer is loaded.
    units, sources = resolve_inputs(inputs, read_options)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    if eos_token is not None and eos_token != tok.eos_token:
        if eos_token not in tok.get_vocab():
            raise ValueError(f"--eos-token {eos_token!r} is not in the tokenizer's vocabulary.")
        tok = copy.deepcopy(tok)  # the copy in DIR/tokenizer/ must name the separator we append
        tok.eos_token = eos_token
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {tok.name_or_path!r} has no eos_token, which prepare appends after every "
            "document. Pass --eos-token with a token of its vocabulary."
        )
    if add_bos and tok.bos_token_id is None:
        raise ValueError(f"--add-bos: tokenizer {tok.name_or_path!r} has no bos_token.")
    ident = tokenizer_identity(tok)
    dtype_name = dtype_for_vocab(ident["vocab_size"], dtype)
    np_dtype = DTYPES[dtype_name]
    eos_id, bos_id = int(tok.eos_token_id), (int(tok.bos_token_id) if add_bos else None)

    has_val = val_fraction > 0 or any(u.split == "val" for u in units)
    splits = [s for s in SPLITS if s == "train" or has_val]
    settings = {"val_fraction": val_fraction, "seed": seed, "eos_id": eos_id, "add_bos": add_bos,
                "dtype": dtype_name, "splits": splits}
    fingerprint = _fingerprint(units, read_options, ident, settings)

    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "no", "off"):
        log.warning("TOKENIZERS_PARALLELISM=%s: encoding runs on one core; unset it for speed",
                    os.environ["TOKENIZERS_PARALLELISM"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        state = _start_or_resume(out, fingerprint, splits, overwrite)
        resumed_from = state["documents"]
        stats = ReadStats()
        backend = tok.backend_tokenizer
        encoder = (ProcessEncoder(backend, np_dtype, workers) if workers > 0
                   else ThreadEncoder(backend, np_dtype, ENCODE_DEPTH))
        chunks = iter_chunks(units, read_options, stats, start=Cursor.from_json(state["cursor"]),
                             chunk_chars=chunk_chars)
        t_loop = time.perf_counter()
        writer = ShardWriter(out, state, eos_id=eos_id, bos_id=bos_id, seed=seed,
                              val_fraction=val_fraction, commit_every_s=commit_every_s)
        bar = tqdm(total=count_known_documents(units), initial=state["records"], unit="doc",
                   desc="prepare", disable=not progress, dynamic_ncols=True)
        try:
            with contextlib.closing(encode_ahead(chunks, _texts, encoder)) as encoded:
                for index, (chunk, arrays) in enumerate(encoded):
                    writer.write(chunk, arrays, index)
                    bar.update(chunk.records)
                    rate = writer.session_tokens / max(time.perf_counter() - t_loop, 1e-9)
                    bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s", refresh=False)
            writer.commit()
        finally:
            writer.close()
            bar.close()
        loop_seconds = time.perf_counter() - t_loop

        if state["documents"] == 0:
            for split in splits:
                (out / partial_name(split)).unlink(missing_ok=True)
            (out / STATE_NAME).unlink(missing_ok=True)
            raise CorpusError(
                f"the corpus is empty: no documents in {list(inputs)} ({state['records']} records, "
                "all blank). Check --input, --text-field and --sample-by."
            )
        return _finalize(
            out, tok, ident, state, splits, sources, seq_len=seq_len, dtype_name=dtype_name,
            eos_id=eos_id, bos_id=bos_id, val_fraction=val_fraction, seed=seed,
            read_options=read_options, stats=stats,
            timing={
                "session_tokens": writer.session_tokens,
                "session_loop_seconds": round(loop_seconds, 4),
                "session_total_seconds": round(time.perf_counter() - t_start, 4),
                "session_tokens_per_s": round(writer.session_tokens / max(loop_seconds, 1e-9), 1),
                "resumed_from_document": resumed_from,
            },
        )


def _texts(chunk: Chunk) -> list[str]:
    return chunk.texts


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Refuse a second prepare writing into the same directory at the same time."""
    with open(out / LOCK_NAME, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusError(
                f"another prepare process is writing to {out} (it holds {out / LOCK_NAME}). Wait for "
                "it to finish, or use another --out directory."
            ) from None
        try:
            yield
        finally:
            (out / LOCK_NAME).unlink(missing_ok=True)  # leave a clean directory behind
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_or_resume(out: Path, fingerprint: dict, splits: list[str], overwrite: bool) -> dict[str, Any]:
    state_path = out / STATE_NAME
    fp_sha = _sha(fingerprint)
    if state_path.exists() and not overwrite:
        state = json.loads(state_path.read_text())
        if state.get("fingerprint_sha256") == fp_sha:
            for split in splits:  # a crash inside _finalize may have renamed some shards already
                partial, final = out / partial_name(split), out / bin_name(split)
                if not partial.exists() and final.exists():
                    os.replace(final, partial)
            log.info("resuming %s at document %d (%d chunks committed)",
                     out, state["documents"], state["chunks"])
            return state
        old = state.get("fingerprint", {})
        changed = sorted(
            k for k in set(old) | set(fingerprint) if _sha(old.get(k)) != _sha(fingerprint.get(k))
        )
        raise CorpusError(
            f"{out} holds an interrupted run with different settings (changed: {changed}). Re-run "
            "with the original arguments to resume it, pass --overwrite to start over, or use "
            "another --out directory."
        )
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise CorpusError(
            f"{out} already holds a prepared dataset ({MANIFEST_NAME} exists). Pass --overwrite to "
            "rebuild it, or choose another --out directory."
        )
    # Fresh start: the manifest goes first, so the directory never claims to be complete while
    # the old .bin files are being replaced.
    for name in [MANIFEST_NAME, STATE_NAME] + [n for s in SPLITS for n in (bin_name(s), partial_name(s))]:
        (out / name).unlink(missing_ok=True)
    state = {
        "version": PIPELINE_VERSION,
        "fingerprint": fingerprint,
        "fingerprint_sha256": fp_sha,
        "cursor": Cursor().to_json(),
        "documents": 0,  # non-empty documents committed (the index used by the val hash)
        "records": 0,  # records read, empty ones included
        "skipped_empty": 0,
        "replacements": 0,
        "chunks": 0,
        "splits": {s: {"tokens": 0, "bytes": 0, "documents": 0, "max_token_id": -1} for s in splits},
    }
    for split in splits:
        (out / partial_name(split)).touch()
    atomic_write_json(state_path, state)
    return state


def _finalize(out: Path, tok: Any, ident: dict, state: dict, splits: list[str], sources: list,
              *, seq_len: int, dtype_name: str, eos_id: int, bos_id: int | None,
              val_fraction: float, seed: int, read_options: ReadOptions, stats: ReadStats,
              timing: dict) -> dict[str, Any]:
    """Rename the partial shards, copy the tokenizer, write the manifest (last), drop the state.

    Idempotent, so a crash in here is also resumable.
    """
    split_info: dict[str, Any] = {}
    warnings: list[str] = []
    for split in splits:
        info = state["splits"][split]
        partial, final = out / partial_name(split), out / bin_name(split)
        if partial.exists():
            if partial.stat().st_size != info["bytes"]:
                raise CorpusError(
                    f"{partial}: size does not match the committed state; re-run with --overwrite."
                )
            os.replace(partial, final)
        split_info[split] = {
            "file": final.name,
            "tokens": info["tokens"],
            "documents": info["documents"],
            "bytes": info["bytes"],
            "max_token_id": info["max_token_id"],
            "sha256": file_sha256(final),
        }
        if info["tokens"] < seq_len + 1:
            warnings.append(
                f"split {split!r} has {info['tokens']} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                "it cannot yield a single sample at this seq_len (use more data, a larger "
                "--val-fraction, or a shorter --seq-len)."
            )
    save_tokenizer(tok, out / TOKENIZER_DIR)
    manifest = {
        "pipeline": "data_prep",
        "version": PIPELINE_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {**ident, "dir": TOKENIZER_DIR},
        "dtype": dtype_name,
        "seq_len": seq_len,
        "eos_id": eos_id,
        "bos_id": bos_id,
        "add_bos": bos_id is not None,
        "layout": "(BOS) document EOS, concatenated in corpus order",
        "splits": split_info,
        "split_policy": {
            "val_fraction": val_fraction,
            "seed": seed,
            "rule": "the source's split when it has one; else val iff "
                    "splitmix64(seed, doc_index) < val_fraction",
        },
        "sources": sources,
        "read_options": {"text_field": read_options.text_field, "sample_by": read_options.sample_by},
        "stats": {
            "documents": state["documents"],
            "records": state["records"],
            "skipped_empty_records": state["skipped_empty"],
            "decode_replacements": state["replacements"],
            "decode_replacement_examples": stats.examples,
            "chunks": state["chunks"],
            **timing,
        },
        "warnings": warnings,
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    (out / STATE_NAME).unlink(missing_ok=True)
    for w in warnings:
        log.warning(w)
    return manifest


def format_summary(manifest: dict[str, Any], out: Path) -> str:
    tok = manifest["tokenizer"]
    st = manifest["stats"]
    rows = [f"{'split':<6} {'documents':>10} {'tokens':>12} {'MB':>8}  sha256"]
    for split, info in manifest["splits"].items():
        rows.append(f"{split:<6} {info['documents']:>10,} {info['tokens']:>12,} "
                    f"{info['bytes'] / 1e6:>8.2f}  {info['sha256'][:16]}")
    rows += [
        f"tokenizer  {tok['name_or_path']} (len {tok['vocab_size']:,}, eos id {manifest['eos_id']}) "
        f"-> {out / tok['dir']}",
        f"dtype      {manifest['dtype']}   seq_len {manifest['seq_len']}",
        f"speed      {st['session_tokens_per_s'] / 1e6:.2f}M tokens/s "
        f"({st['session_tokens']:,} tokens in {st['session_loop_seconds']:.2f}s)",
        f"skipped    {st['skipped_empty_records']} empty records; "
        f"{st['decode_replacements']} undecodable byte sequences replaced",
    ]
    rows += [f"WARNING    {w}" for w in manifest["warnings"]]
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Tokenize a corpus into train.bin / val.bin token shards + manifest.json "
                    "(resumable; rerun the same command to continue an interrupted run).",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR_OR_DATASET",
                   help=".txt/.jsonl/.parquet files, directories of them, a JSONL manifest of "
                        'files ({"path": ..., "split": ...} per line), a save_to_disk folder, or a '
                        "Hub dataset name (e.g. roneneldan/TinyStories)")
    p.add_argument("--tokenizer", required=True, metavar="DIR_OR_NAME",
                   help="tokenizer directory or Hub name (gpt2, meta-llama/Llama-2-7b-hf, "
                        "meta-llama/Meta-Llama-3-8B, Qwen/Qwen3-1.7B)")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    p.add_argument("--seq-len", type=int, required=True,
                   help="training sequence length (recorded; each split is checked to hold one sample)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="fraction of documents carved out for validation when the source has no "
                        "validation split (default 0.01; 0 = everything in train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val carve-out (default 0)")
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
                   help="token appended after every document (default: the tokenizer's eos; "
                        "e.g. '<|endoftext|>' for Qwen3 chat tokenizers whose eos is <|im_end|>)")
    p.add_argument("--add-bos", action="store_true", help="also prepend BOS to every document")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="token dtype (default auto: uint16 if the vocabulary fits, else uint32)")
    p.add_argument("--chunk-chars", type=int, default=500_000,
                   help="characters per chunk (bounds memory: about 4 chunks are in flight; "
                        "default 500000)")
    p.add_argument("--workers", type=int, default=0,
                   help="encoder processes (default 0: threads in this process, best up to ~16 "
                        "cores; use N > 0 on many-core machines)")
    p.add_argument("--commit-every", type=float, default=2.0, metavar="SECONDS",
                   help="commit the resume state at most this often (default 2; 0 = every chunk)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if DIR holds a finished or interrupted run")
    p.add_argument("--json", metavar="FILE", help="also write the manifest to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    read_options = ReadOptions(
        text_field=args.text_field, sample_by=args.sample_by, dataset_config=args.dataset_config,
        split=args.split, val_split=args.val_split, streaming=args.streaming,
    )
    try:
        manifest = prepare(
            args.input, args.tokenizer, args.out, seq_len=args.seq_len,
            val_fraction=args.val_fraction, seed=args.seed, read_options=read_options,
            eos_token=args.eos_token, add_bos=args.add_bos, dtype=args.dtype,
            chunk_chars=args.chunk_chars, commit_every_s=args.commit_every, workers=args.workers,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except ValueError as e:  # CorpusError, TokenizerError, ManifestError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(manifest, Path(args.out)))
    print(f"wrote {Path(args.out) / MANIFEST_NAME}")
    if args.json:
        atomic_write_json(args.json, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
