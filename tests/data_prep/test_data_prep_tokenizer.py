"""Tokenizer training and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.tokenizer import (
    TokenizerError,
    load_tokenizer,
    tokenizer_identity,
    train_tokenizer,
)


def test_trained_tokenizer_loads_with_autotokenizer(tmp_path: Path, small_corpus: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "tok"
    train_tokenizer([str(small_corpus)], out, vocab_size=400, min_frequency=2, progress=False)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.is_fast
    assert len(tok) == 400
    assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", 0)
    assert (tok.bos_token, tok.bos_token_id) == ("<|bos|>", 1)
    assert (tok.pad_token, tok.pad_token_id) == ("<|pad|>", 2)
    # Byte-level: anything round-trips, including bytes never seen in training.
    text = "Double, double toil and trouble; naïve café — 日本語 🙂\ttabs\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert max(ids) < 400
    # The saved class name also loads on transformers 4.x.
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_shipped_tokenizer_is_reproducible(tmp_path: Path, corpus_dir: Path, tokenizer) -> None:
    """tests/assets/tokenizer is exactly what our tool trains on the shipped corpus."""
    ident = tokenizer_identity(tokenizer)
    assert ident["vocab_size"] == 2048
    assert (ident["eos_id"], ident["bos_id"], ident["pad_id"]) == (0, 1, 2)
    retrained = train_tokenizer([str(corpus_dir)], None, vocab_size=2048, progress=False)
    assert tokenizer_identity(retrained)["sha256"] == ident["sha256"]


def test_custom_special_tokens_and_gpt2_style_bos(tmp_path: Path, small_corpus: Path) -> None:
    tok = train_tokenizer([str(small_corpus)], None, vocab_size=300, eos_token="</s>",
                          bos_token="</s>", pad_token=None, progress=False)
    assert tok.eos_token_id == tok.bos_token_id == 0
    assert tok.pad_token is None


def test_bad_training_input(tmp_path: Path, small_corpus: Path) -> None:
    with pytest.raises(TokenizerError, match=r"vocab_size 100 is too small.*--vocab-size >= 260"):
        train_tokenizer([str(small_corpus)], None, vocab_size=100, progress=False)
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(TokenizerError, match="corpus is empty"):
        train_tokenizer([str(tmp_path / "blank.txt")], None, vocab_size=300, progress=False)


def test_unreachable_hub_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(TokenizerError, match=r"(?s)could not load tokenizer 'Qwen/Qwen3-1.7B'.*offline.*--save DIR"):
        load_tokenizer("Qwen/Qwen3-1.7B")


def test_load_local_tokenizer_and_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) == 2048
    with pytest.raises(TokenizerError, match="is a file; pass the directory"):
        load_tokenizer(tokenizer_dir / "tokenizer.json")
