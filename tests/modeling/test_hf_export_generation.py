"""Exports stop generating at the tokenizer's end-of-text token and know their trained context.

No training: a tiny LLaMA whose weights make it a fixed bigram chain a -> b -> c -> EOS (attention
and MLP outputs zeroed, so the residual stream is the current token's embedding; orthogonal
embeddings for a, b, c; the LM head maps each to its successor). Exported with the shipped
tokenizer, then generated from with plain transformers: greedy decoding must stop right after
EOS, long before max_new_tokens. Before finish_export the config said eos_token_id: null and
generation ran through EOS to max_new_tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeling import DecoderConfig, DecoderForCausalLM
from modeling.hf_export import export_hf, finish_export, special_token_ids

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
SEQ_LEN = 64
CHAIN = (100, 101, 102)  # a -> b -> c, then c -> EOS


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@torch.no_grad()
def _bigram_chain_model(tokenizer) -> DecoderForCausalLM:
    config = DecoderConfig.from_preset("tiny-llama", vocab_size=len(tokenizer), attn_implementation="eager",
                                       tie_word_embeddings=False)
    model = DecoderForCausalLM(config).eval()
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()  # attention adds nothing to the residual stream
        layer.mlp.down_proj.weight.zero_()  # nor does the MLP
    d = config.hidden_size
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    head.zero_()
    successors = [*CHAIN[1:], tokenizer.eos_token_id]
    for i, (tok, nxt) in enumerate(zip(CHAIN, successors)):
        emb[tok].zero_()
        emb[tok, i] = d**0.5  # RMS-normalised: e_i * sqrt(d), orthogonal to the other chain tokens
        head[nxt, i] = 10.0  # logit of the successor: 10 * sqrt(d); every other logit 0
    return model


def test_special_token_ids_of_the_shipped_tokenizer(tokenizer):
    assert special_token_ids(tokenizer) == {"bos_token_id": 1, "eos_token_id": 0, "pad_token_id": 2}


def test_native_export_stops_at_eos_and_carries_the_tokenizer_fields(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = _bigram_chain_model(tokenizer)
    out = tmp_path / "hf"
    export_hf(model, out, tokenizer=tokenizer, max_length=SEQ_LEN)

    config = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    for fields in (config, gen):
        assert (fields["bos_token_id"], fields["eos_token_id"], fields["pad_token_id"]) == (1, 0, 2)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == SEQ_LEN

    native = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_tok = AutoTokenizer.from_pretrained(out)
    assert loaded_tok.model_max_length == SEQ_LEN and loaded_tok.eos_token_id == 0
    assert GenerationConfig.from_pretrained(out).eos_token_id == 0
    prompt = torch.tensor([[5, 6, CHAIN[0]]])
    generated = native.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False)
    assert generated[0].tolist() == [5, 6, *CHAIN, 0]  # b, c, EOS and stop (not 40 new tokens)

    # The same through the pipeline a user reaches for first.
    from transformers import pipeline

    text = loaded_tok.decode([5, 6, CHAIN[0]])
    pipe = pipeline("text-generation", model=native, tokenizer=loaded_tok, device="cpu")
    result = pipe(text, max_new_tokens=40, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert len(result) <= len(loaded_tok(text)["input_ids"]) + 3


def test_without_the_ids_generation_runs_to_max_new_tokens(tokenizer, tmp_path):
    """The reference the fix is measured against: the same weights, eos unknown to the config."""
    from transformers import AutoModelForCausalLM

    model = _bigram_chain_model(tokenizer)
    out = tmp_path / "bare"
    export_hf(model, out)  # no tokenizer: nothing to take the ids from
    native = AutoModelForCausalLM.from_pretrained(out).eval()
    assert native.generation_config.eos_token_id is None
    prompt = torch.tensor([[5, 6, CHAIN[0]]])
    generated = native.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                                pad_token_id=2)
    assert generated.shape[1] == 3 + 10 and generated[0, 5].item() == 0  # went straight through EOS


def test_our_save_pretrained_folder_gets_the_same_fields(tokenizer, tmp_path):
    """checkpoint model/ (DecoderForCausalLM.save_pretrained + tokenizer), as training/checkpoint.py writes it."""
    import modeling  # noqa: F401  (registers our class with the Auto* factories)
    from transformers import AutoModelForCausalLM

    model = _bigram_chain_model(tokenizer)
    out = tmp_path / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    finish_export(out, tokenizer, max_length=SEQ_LEN)
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 0, 2)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == SEQ_LEN
    ours = AutoModelForCausalLM.from_pretrained(out)
    assert ours.config.eos_token_id == 0 and ours.generation_config.eos_token_id == 0


def test_conflicting_ids_follow_the_tokenizer_and_eos_lists_holding_it_are_kept(tokenizer, tmp_path, caplog):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "eos_token_id": 7, "bos_token_id": None}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 9]}))
    finish_export(tmp_path, tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] == 0 and config["bos_token_id"] == 1 and "replaced" in caplog.text
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == [0, 9]
