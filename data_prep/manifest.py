"""The data directory contract: token dtype, manifest.json, and the checks every reader runs.

A prepared data directory:

    DIR/manifest.json     written last (its presence means the directory is complete)
    DIR/train.bin         token ids, raw little-endian array of `dtype` (np.memmap-able)
    DIR/val.bin           present when the run had a validation split
    DIR/tokenizer/        the tokenizer, so DIR is self-contained (training copies it into
                          checkpoints; eval and publishing load it from there)

manifest.json (version 1.x; written by `prepare._finalize`):

    pipeline, version        "data_prep", PIPELINE_VERSION (major bump = incompatible layout)
    created_utc              ISO timestamp
    tokenizer                name_or_path, class, vocab_size (= len(tokenizer), added tokens
                             included), bos/eos/pad _token and _id, sha256 (of tokenizer.json),
                             dir ("tokenizer", relative to DIR)
    dtype                    "uint16" | "uint32" (little-endian)
    seq_len                  the sequence length given to prepare (informational)
    eos_id, bos_id, add_bos  the separator appended after every document; bos_id is null unless
                             --add-bos; layout: "(BOS) document EOS, concatenated in corpus order"
    splits.{train,val}       file, tokens, documents, bytes (= tokens x itemsize), max_token_id,
                             sha256 of the file
    split_policy             val_fraction, seed, rule
    sources                  one entry per --input: {input, kind: local | file_manifest | hub |
                             saved_dataset, path | name + config + streaming, files, bytes, splits}
    read_options             text_field, sample_by
    stats                    documents, records, skipped_empty_records, decode_replacements (+
                             examples), chunks, session_* timing of the last (resumed) session
    warnings                 e.g. a split shorter than seq_len + 1
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

PIPELINE_VERSION = "1.0"
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
    """Read DIR/manifest.json and check that every split's .bin matches it.

    Always checks that each .bin exists and that its byte length equals tokens x dtype size (a
    truncated or half-copied shard is caught before training reads garbage). `verify_hash=True`
    also re-hashes the files against the manifest (reads every byte: slow on big corpora).
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        hint = (
            " An interrupted run left prepare_state.json there: re-run the same prepare command to resume."
            if (data_dir / "prepare_state.json").exists()
            else ""
        )
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
    if major != PIPELINE_VERSION.split(".")[0]:
        raise ManifestError(
            f"{path} has pipeline version {manifest['version']}, this code reads "
            f"{PIPELINE_VERSION}; {_FIX}."
        )
    if manifest["dtype"] not in DTYPES:
        raise ManifestError(f"{path}: unknown dtype {manifest['dtype']!r}; {_FIX}.")
    itemsize = np.dtype(DTYPES[manifest["dtype"]]).itemsize
    for split, info in manifest["splits"].items():
        bin_path = data_dir / info["file"]
        if not bin_path.is_file():
            raise ManifestError(f"{bin_path} (split {split!r}) is missing; {_FIX}.")
        expected = info["tokens"] * itemsize
        actual = bin_path.stat().st_size
        if actual != expected:
            raise ManifestError(
                f"{bin_path} is truncated or corrupt: manifest says {info['tokens']} tokens x "
                f"{itemsize} bytes = {expected} bytes, the file has {actual} bytes; {_FIX}."
            )
        if verify_hash and file_sha256(bin_path) != info["sha256"]:
            raise ManifestError(
                f"{bin_path} is corrupt: its sha256 differs from the manifest's; {_FIX}."
            )
    return manifest


def check_vocab_compat(manifest: dict[str, Any], model_vocab_size: int) -> None:
    """Raise if the data holds token ids the model's embedding table cannot index.

    The model may be larger (vocabularies are often padded up to a multiple of 64 or 128 for
    matmul efficiency); it must not be smaller, or the embedding lookup fails (or, on GPU, reads
    out of bounds with an unhelpful device-side assert).
    """
    tok_vocab = int(manifest["tokenizer"]["vocab_size"])
    if tok_vocab > model_vocab_size:
        raise ValueError(
            f"vocabulary mismatch: the data was tokenized with {manifest['tokenizer']['name_or_path']!r} "
            f"which has {tok_vocab} tokens, but the model's vocab_size is {model_vocab_size}. "
            f"Set the model's vocab_size >= {tok_vocab} (e.g. {-(-tok_vocab // 128) * 128}, padded "
            "to a multiple of 128), or re-prepare the data with the model's tokenizer."
        )
