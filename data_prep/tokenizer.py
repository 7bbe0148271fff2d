"""Tokenizers: train a byte-level BPE on any corpus, or load an existing one by path or Hub name.

Train (GPT-2-style byte-level BPE, so every byte sequence is encodable and nothing maps to <unk>):

    python -m data_prep.tokenizer train --input tests/assets/corpus --vocab-size 2048 --out tok/

Inspect / snapshot an existing tokenizer (prints its identity as JSON; --save makes an offline copy):

    python -m data_prep.tokenizer info gpt2 --save tok_gpt2/
    python -m data_prep.tokenizer info meta-llama/Meta-Llama-3-8B    # gated: `huggingface-cli login`

The result is an ordinary Hugging Face tokenizer directory: `AutoTokenizer.from_pretrained(dir)`
returns a fast tokenizer with bos/eos/pad set. Hub names used across this repo: `gpt2`,
`meta-llama/Llama-2-7b-hf`, `meta-llama/Meta-Llama-3-8B`, `Qwen/Qwen3-1.7B`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .atomic import atomic_write_dir, atomic_write_json
from .readers import SAMPLE_BY, ReadStats
from .sources import ReadOptions, iter_chunks, resolve_inputs

log = logging.getLogger(__name__)

# Special tokens of tokenizers trained here. <|endoftext|> is GPT-2's document separator; a pad
# distinct from eos keeps "ignore padding" masks from also hiding the end-of-document target.
DEFAULT_EOS = "<|endoftext|>"
DEFAULT_BOS = "<|bos|>"
DEFAULT_PAD = "<|pad|>"
BYTE_ALPHABET = 256


class TokenizerError(ValueError):
    """The tokenizer cannot be trained, loaded or used as asked; the message names the fix."""


def train_tokenizer(
    inputs: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int,
    min_frequency: int = 2,
    eos_token: str = DEFAULT_EOS,
    bos_token: str | None = DEFAULT_BOS,
    pad_token: str | None = DEFAULT_PAD,
    read_options: ReadOptions = ReadOptions(),
    progress: bool = True,
) -> Any:
    """Train a byte-level BPE on the documents of `inputs` (same input forms as `prepare`).

    Returns a `transformers.PreTrainedTokenizerFast`; saves it to `out_dir` when given. Special
    tokens come first in the vocabulary (eos, bos, pad ids 0, 1, 2 with the defaults).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [t for t in (eos_token, bos_token, pad_token) if t]
    specials = list(dict.fromkeys(specials))  # bos may equal eos (GPT-2 style)
    if vocab_size < BYTE_ALPHABET + len(specials) + 1:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs {BYTE_ALPHABET} byte "
            f"tokens + {len(specials)} special tokens + at least one merge. Use "
            f"--vocab-size >= {BYTE_ALPHABET + len(specials) + 1}."
        )
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}.")

    units, _ = resolve_inputs(inputs, read_options)
    stats = ReadStats()
    counted = {"docs": 0}

    def texts() -> Iterator[list[str]]:
        for chunk in iter_chunks(units, read_options, stats):
            counted["docs"] += len(chunk.texts)
            yield chunk.texts

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: text is encoded exactly as written, like GPT-2's own tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        # Seed all 256 byte symbols, not only those seen: unseen bytes must still be encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(_flatten(texts()), trainer=trainer)
    if counted["docs"] == 0:
        raise TokenizerError(f"no documents found in {list(inputs)}: the corpus is empty.")
    if stats.replacements:
        log.warning("replaced %d undecodable byte sequences (e.g. %s)",
                    stats.replacements, stats.examples[:3])
    if tok.get_vocab_size() < vocab_size:
        log.warning(
            "the corpus only supports %d tokens (asked for %d): too little text or min_frequency too high",
            tok.get_vocab_size(), vocab_size,
        )

    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos_token, bos_token=bos_token, pad_token=pad_token
    )
    fast.name_or_path = str(out_dir) if out_dir is not None else "data_prep-bpe"
    if out_dir is not None:
        save_tokenizer(fast, out_dir)
    return fast


def _flatten(batches: Iterator[list[str]]) -> Iterator[str]:
    for batch in batches:
        yield from batch


def save_tokenizer(tokenizer: Any, out_dir: str | Path, *, eos_token: str | None = None) -> None:
    """`save_pretrained` into a temporary directory, renamed into place when complete.

    `eos_token`: record this token as the copy's eos (prepare's document separator, when it
    differs from the tokenizer's configured eos). Written into the saved config rather than set
    on a deepcopy of the tokenizer, which takes ~15 s for a 150k vocabulary.
    """

    def fill(tmp: Path) -> None:
        tokenizer.save_pretrained(str(tmp))
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        if eos_token is not None and cfg.get("eos_token") != eos_token:
            cfg["eos_token"] = eos_token
            atomic_write_json(cfg_path, cfg)
            special = tmp / "special_tokens_map.json"
            if special.is_file():  # transformers 4.x layout
                smap = json.loads(special.read_text())
                smap["eos_token"] = eos_token
                atomic_write_json(special, smap)
        # transformers 5 writes its internal class name; the public alias loads in 4.x and 5.x, so
        # the directory also works for users of the published checkpoint on older versions.
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            atomic_write_json(cfg_path, cfg)

    atomic_write_dir(out_dir, fill)


def load_tokenizer(name_or_path: str | Path, *, revision: str | None = None) -> Any:
    """A fast tokenizer from a local directory or a Hub name (`gpt2`, `Qwen/Qwen3-1.7B`, ...)."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise TokenizerError(f"tokenizer path {name!r} is a file; pass the directory that holds it.")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, revision=revision)
    except (OSError, ValueError) as e:
        where = (
            f"the local directory {name!r}"
            if local.is_dir()
            else f"the Hugging Face Hub (no local directory {name!r} exists)"
        )
        raise TokenizerError(
            f"could not load tokenizer {name!r} from {where}: {e}\n"
            "Fix: pass a local tokenizer directory, or on a machine with network run "
            f"`python -m data_prep.tokenizer info {name} --save DIR` and use DIR. Gated models "
            "(meta-llama/*) also need `huggingface-cli login` and an accepted licence."
        ) from e
    if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
        raise TokenizerError(
            f"tokenizer {name!r} has no fast (Rust `tokenizers`) backend, which prepare needs for "
            "batch encoding. Use a tokenizer that ships tokenizer.json."
        )
    return tok


def tokenizer_sha256(tokenizer: Any) -> str:
    """Content hash of the serialised backend tokenizer (vocab, merges, added tokens, pipeline)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What the manifest records so later stages can check they use the same tokenizer."""
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        # len() counts added tokens; `vocab_size` on HF tokenizers does not (a classic mismatch).
        "vocab_size": len(tokenizer),
        "bos_token": tokenizer.bos_token,
        "bos_id": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token,
        "pad_id": tokenizer.pad_token_id,
        "sha256": tokenizer_sha256(tokenizer),
    }


def _read_options(args: argparse.Namespace) -> ReadOptions:
    return ReadOptions(
        text_field=args.text_field,
        sample_by=args.sample_by,
        dataset_config=args.dataset_config,
        split=args.split,
        streaming=args.streaming,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.tokenizer",
        description="Train a byte-level BPE tokenizer, or inspect/snapshot an existing one.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a byte-level BPE on a corpus",
                       description="Train a byte-level BPE on local files/dirs or a Hub dataset.")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR_OR_DATASET",
                   help=".txt/.jsonl/.parquet files, directories of them, a JSONL file manifest, "
                        "or a Hub dataset name")
    t.add_argument("--vocab-size", type=int, required=True, help="total vocabulary incl. specials")
    t.add_argument("--out", required=True, help="output tokenizer directory")
    t.add_argument("--min-frequency", type=int, default=2, help="min pair count to merge (default 2)")
    t.add_argument("--eos-token", default=DEFAULT_EOS, help=f"default {DEFAULT_EOS}")
    t.add_argument("--bos-token", default=DEFAULT_BOS, help=f"default {DEFAULT_BOS}; '' for none")
    t.add_argument("--pad-token", default=DEFAULT_PAD, help=f"default {DEFAULT_PAD}; '' for none")
    t.add_argument("--text-field", default="text", help="JSONL/Parquet/Hub text field (default text)")
    t.add_argument("--sample-by", choices=SAMPLE_BY, default="paragraph",
                   help=".txt documents: paragraph (blank-line separated, default), line, document")
    t.add_argument("--dataset-config", default=None, help="Hub dataset configuration")
    t.add_argument("--split", default=None, help="Hub dataset split (default: train)")
    t.add_argument("--streaming", action="store_true", help="stream the Hub dataset")
    t.add_argument("--json", metavar="FILE", help="also write the tokenizer identity to FILE")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="load a tokenizer (path or Hub name) and print its identity",
                       description="Load a tokenizer by local path or Hub name and print its "
                                   "identity (vocab size, special ids, hash) as JSON.")
    i.add_argument("name_or_path", help="local directory or Hub name, e.g. gpt2, Qwen/Qwen3-1.7B")
    i.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    i.add_argument("--save", metavar="DIR", help="save a local copy (for offline machines)")
    i.add_argument("--json", metavar="FILE", help="also write the identity to FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            tok = train_tokenizer(
                args.input,
                args.out,
                vocab_size=args.vocab_size,
                min_frequency=args.min_frequency,
                eos_token=args.eos_token,
                bos_token=args.bos_token or None,
                pad_token=args.pad_token or None,
                read_options=_read_options(args),
                progress=not args.no_progress,
            )
            log.info("saved tokenizer to %s", args.out)
        else:
            tok = load_tokenizer(args.name_or_path, revision=args.revision)
            if args.save:
                save_tokenizer(tok, args.save)
                log.info("saved a copy to %s", args.save)
    except (TokenizerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ident = tokenizer_identity(tok)
    if args.json:
        atomic_write_json(args.json, ident)
    print(json.dumps(ident, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
