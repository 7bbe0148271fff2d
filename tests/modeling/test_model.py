"""PreTrainedModel behaviour: loss convention, generation, save/load, Auto classes, native export."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from modeling import DecoderConfig, DecoderForCausalLM, export_hf


def test_loss_shifts_labels_and_ignores_minus_100():
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    ids = torch.randint(0, 2048, (2, 16))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(input_ids=ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 2048), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    # shift_labels: targets already aligned with the inputs (what PackedTokenDataset yields)
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(model(input_ids=ids, shift_labels=shifted).loss, expected)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-qwen3"])
def test_generate_with_cache_equals_without(preset):
    model = DecoderForCausalLM(DecoderConfig.from_preset(preset)).eval()
    prompt = torch.randint(0, 2048, (1, 6))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape == (1, 14)
    assert cached.tolist() == uncached.tolist()


def test_cache_is_accepted_under_both_names():
    """transformers >= 5.24 passes the KV cache as `cache`, older releases as `past_key_values`: both fill
    the same cache, and decoding one token over it equals the full forward's last position."""
    from transformers.cache_utils import DynamicCache

    from modeling.modeling_decoder import CACHE_FIELD

    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    ids = torch.randint(0, 2048, (1, 9))
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        for name in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            out = model(input_ids=ids[:, :-1], use_cache=True, **{name: cache})
            assert getattr(out, CACHE_FIELD) is cache and cache.get_seq_length() == 8
            step = model(input_ids=ids[:, -1:], use_cache=True, **{name: cache}).logits[:, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="pass the KV cache once"):
            model(input_ids=ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))


def test_left_padded_batch_matches_unpadded():
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).eval()
    a = torch.randint(0, 2048, (1, 10))
    b = torch.randint(0, 2048, (1, 7))
    batch = torch.cat([a, F.pad(b, (3, 0), value=0)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        padded = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=b).logits
    torch.testing.assert_close(padded[1, 3:], alone[0], atol=1e-5, rtol=0)


def test_save_and_load_roundtrip_with_auto_classes(tmp_path):
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-qwen3")).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DecoderForCausalLM)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_tied_model_saves_one_matrix(tmp_path):
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-gpt2"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded = DecoderForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-qwen3"])
def test_exported_directory_loads_with_plain_transformers(tmp_path, preset):
    model = DecoderForCausalLM(DecoderConfig.from_preset(preset)).eval()
    export_hf(model, tmp_path / "hf")
    ids = torch.randint(0, 2048, (1, 12))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    # a fresh interpreter that never imports our packages; no trust_remote_code
    code = (
        "import sys, torch, transformers\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}).eval()\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "with torch.no_grad(): out = m(input_ids=e['ids']).logits\n"
        "torch.testing.assert_close(out, e['logits'], atol=1e-5, rtol=0)\n"
        "assert not any(k.startswith(('modeling', 'training', 'data_prep')) for k in sys.modules), 'imported our code'\n"
        "print(type(m).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == {"tiny-gpt2": "GPT2LMHeadModel", "tiny-llama": "LlamaForCausalLM",
                                  "tiny-qwen3": "Qwen3ForCausalLM"}[preset]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "auto_map" not in config  # nothing that would need remote code
