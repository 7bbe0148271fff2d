"""Attention backends: one signature, same numbers; backend choice and its errors."""

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from modeling import DecoderConfig, DecoderForCausalLM, attention
from modeling.attention import ATTENTION_FUNCTIONS, eager_attention, resolve_attn_implementation
from reference_attention import reference_attention


def _qkv(B=2, Tq=12, Tk=12, nh=4, nkv=2, hd=16):
    return torch.randn(B, Tq, nh, hd), torch.randn(B, Tk, nkv, hd), torch.randn(B, Tk, nkv, hd)


_reference = reference_attention  # tests/reference_attention.py


@pytest.mark.parametrize("name", ["eager", "sdpa"])
@pytest.mark.parametrize("nkv", [4, 2, 1])
def test_backends_match_reference_causal_and_masked(name, nkv):
    q, k, v = _qkv(nkv=nkv)
    fn = ATTENTION_FUNCTIONS[name]
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None].expand(2, 1, 12, 12)
    out = fn(q, k, v, causal=True, mask=None, dropout_p=0.0, scale=16**-0.5)
    torch.testing.assert_close(out, _reference(q, k, v, causal), atol=1e-5, rtol=1e-5)
    pad = causal.clone()
    pad[1, :, :, :3] = False  # left padding of sample 1
    pad[1, :, torch.arange(3), torch.arange(3)] = True
    out = fn(q, k, v, causal=False, mask=pad, dropout_p=0.0, scale=16**-0.5)
    torch.testing.assert_close(out, _reference(q, k, v, pad), atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("name", ["eager", "sdpa"])
@pytest.mark.parametrize("nkv", [4, 2, 1])
def test_backends_match_reference_gradients(name, nkv):
    """Backward too: eager groups query heads per KV head instead of copying K/V, and sdpa repeats K/V
    when a mask is given; the gradients of q, k and v must still be the textbook ones."""
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None].expand(2, 1, 12, 12)
    pad = causal.clone()
    pad[0, :, :, :2] = False
    pad[0, :, torch.arange(2), torch.arange(2)] = True
    for mask in (None, pad):
        q, k, v = (t.requires_grad_() for t in _qkv(nkv=nkv))
        out = ATTENTION_FUNCTIONS[name](q, k, v, causal=mask is None, mask=mask, dropout_p=0.0, scale=16**-0.5)
        w = torch.randn_like(out)
        got = torch.autograd.grad((out * w).sum(), (q, k, v))
        want = torch.autograd.grad((_reference(q, k, v, causal if mask is None else mask) * w).sum(), (q, k, v))
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)

def test_causal_is_bottom_right_aligned_over_a_cache():
    q, k, v = _qkv(Tq=3, Tk=10)
    mask = torch.ones(3, 10, dtype=torch.bool).tril(diagonal=7)[None, None].expand(2, 1, 3, 10)
    torch.testing.assert_close(eager_attention(q, k, v, causal=True, mask=None, dropout_p=0.0, scale=0.25),
                               _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_models_agree():
    cfg = dict(attn_implementation="eager")
    eager = DecoderForCausalLM(DecoderConfig.from_preset("tiny-qwen3", **cfg)).eval()
    sdpa = DecoderForCausalLM(DecoderConfig.from_preset("tiny-qwen3", attn_implementation="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 2048, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids=ids).logits, sdpa(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_auto_on_cpu_resolves_to_sdpa_and_says_why(caplog):
    name, reason = resolve_attn_implementation("auto")
    assert name == "sdpa"
    assert "flash_attn" in reason or "CUDA" in reason
    with caplog.at_level(logging.INFO, logger="modeling.modeling_decoder"):
        model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama"))
    assert model.config._attn_implementation == "sdpa"
    # one short sentence, and never "install flash-attn" to someone without a GPU
    assert "attention: sdpa (flash_attention_2 needs a CUDA GPU)" in caplog.text and "install" not in caplog.text


def test_missing_flash_attn_on_a_gpu_machine_says_how_to_install(monkeypatch):
    monkeypatch.setattr(attention, "_cuda_available", lambda: True)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert resolve_attn_implementation("auto")[1].startswith("flash_attn not installed")
    with pytest.raises(ImportError, match=r"flash_attention_2.*cannot run.*pip install flash-attn"):
        resolve_attn_implementation("flash_attention_2")


def test_explicit_flash_on_cpu_is_a_clear_error():
    with pytest.raises(ImportError, match=r"flash_attention_2.*cannot run.*no CUDA device"):
        DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation="flash_attention_2"))


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A test-only stand-in for the flash_attn package: flash_attn_func's (B, S, H, D) contract on top of SDPA."""
    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(dict(shape=tuple(q.shape), kv_heads=k.shape[2], causal=causal, dtypes={q.dtype, k.dtype, v.dtype}))
        tq, tk = q.shape[1], k.shape[1]
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq) if causal else None  # bottom-right
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                             scale=softmax_scale, enable_gqa=True)
        return out.transpose(1, 2)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func
    module.__spec__ = types.SimpleNamespace(name="flash_attn", loader=None, origin="test", submodule_search_locations=None)
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: module.__spec__ if name == "flash_attn" else None)
    monkeypatch.setattr(attention, "_cuda_available", lambda: True)
    return calls


def test_flash_choice_follows_the_compute_dtype(fake_flash_attn):
    """flash_attn kernels take fp16/bf16 only: "auto" picks SDPA for an fp32 run, and an explicit request
    for one is refused up front instead of failing in the first forward."""
    assert resolve_attn_implementation("auto", compute_dtype=torch.bfloat16)[0] == "flash_attention_2"
    name, reason = resolve_attn_implementation("auto", compute_dtype=torch.float32)
    assert name == "sdpa" and "fp16/bf16 only" in reason
    with pytest.raises(ImportError, match="fp16/bf16 only"):
        resolve_attn_implementation("flash_attention_2", compute_dtype=torch.float32)


def test_flash_path_layout_causal_and_gqa(fake_flash_attn):
    assert resolve_attn_implementation("auto")[0] == "flash_attention_2"
    eager = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation="eager")).eval()
    flash = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation="flash_attention_2")).eval()
    flash.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 2048, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(flash(input_ids=ids).logits, eager(input_ids=ids).logits, atol=1e-5, rtol=0)
    # (B, S, H, D) layout, GQA passed through un-repeated (2 KV heads for 4 query heads), causal flag set
    assert fake_flash_attn[0] == dict(shape=(2, 32, 4, 16), kv_heads=2, causal=True, dtypes={torch.float32})
    # generation: prefill then one-token decode steps over the cache (no mask needed on either)
    with torch.no_grad():
        a = flash.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
        b = eager.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert a.tolist() == b.tolist()


def test_flash_path_under_autocast_gets_one_half_dtype(fake_flash_attn):
    """Under autocast (fp32 weights, accelerate's mixed precision) RoPE returns fp32 q, k while v is
    bf16; flash_attn's kernels take a single fp16/bf16 dtype, so the backend casts like HF's integration."""
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-qwen3", attn_implementation="flash_attention_2"))
    ids = torch.randint(0, 2048, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    assert fake_flash_attn and all(c["dtypes"] == {torch.bfloat16} for c in fake_flash_attn)


def test_every_attention_name_has_a_kernel():
    """modeling/names.py is the one list: every name but auto has a kernel, and there is no other kernel."""
    from modeling.attention import ATTENTION_FUNCTIONS
    from modeling.names import ATTN_IMPLEMENTATIONS

    assert set(ATTENTION_FUNCTIONS) == set(ATTN_IMPLEMENTATIONS) - {"auto"}
