"""Our decoder against the native transformers classes with the same weights (float32, CPU)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from modeling import DecoderConfig, DecoderForCausalLM, from_hf, to_hf

TOL = 1e-5  # float32 on the same kernels: only summation order differs

VARIANTS = [
    ("tiny-gpt2", {}),                                   # MHA, tied, learned positions, LayerNorm, biases
    ("tiny-gpt2", {"tie_word_embeddings": False, "mlp_type": "gelu"}),
    ("tiny-llama", {}),                                  # GQA 4:2, untied
    ("tiny-llama", {"tie_word_embeddings": True, "num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True}),
    ("tiny-qwen3", {}),                                  # GQA, qk-norm, decoupled head_dim 32 (4 x 32 != 64)
    ("tiny-qwen3", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
]


def _randomize_norms(model):
    """Norm weights start at 1 and biases at 0: perturb them so a swapped norm would show in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or ".bias" in name:
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("preset,overrides", VARIANTS)
def test_ours_to_native_same_logits(preset, overrides, attn):
    config = DecoderConfig.from_preset(preset, attn_implementation=attn, **overrides)
    ours = DecoderForCausalLM(config).eval()
    _randomize_norms(ours)
    native = to_hf(ours).eval()
    assert type(native).__name__ == {"tiny-gpt2": "GPT2LMHeadModel", "tiny-llama": "LlamaForCausalLM",
                                     "tiny-qwen3": "Qwen3ForCausalLM"}[preset]
    assert native.config._attn_implementation == attn
    ids = torch.randint(0, config.vocab_size, (3, 48))
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, native(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    # tying survives the export: one tensor, not two equal copies
    tied = native.lm_head.weight.data_ptr() == native.get_input_embeddings().weight.data_ptr()
    assert tied == config.tie_word_embeddings


def _native_models():
    common = dict(vocab_size=300, initializer_range=0.05)
    yield GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=64, **common))
    yield LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                                       **common))
    yield LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       tie_word_embeddings=True, **common))
    yield Qwen3ForCausalLM(Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=24, **common))


@pytest.mark.parametrize("native", list(_native_models()), ids=lambda m: type(m).__name__ + ("-tied" if m.config.tie_word_embeddings else ""))
def test_native_to_ours_same_logits(native):
    native.eval()
    _randomize_norms(native)
    ours = from_hf(native, attn_implementation="eager").eval()
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, native(input_ids=ids).logits, atol=TOL, rtol=0)
    # and back again: a lossless round trip
    again = to_hf(ours)
    for (k1, v1), (k2, v2) in zip(sorted(native.state_dict().items()), sorted(again.state_dict().items())):
        assert k1 == k2
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)


def test_gpt2_1_36b_refuses_export_with_reason():
    from modeling import NotExportableError, hf_family

    with pytest.raises(NotExportableError, match=r"18 x 135 = 2430 != hidden_size 2432"):
        hf_family(DecoderConfig.from_preset("gpt2-1.36b"))
    assert hf_family(DecoderConfig.from_preset("gpt2-1.36b", num_attention_heads=19, head_dim=128)) == "gpt2"
    assert hf_family(DecoderConfig.from_preset("qwen3-1.8b")) == "qwen3"
    assert hf_family(DecoderConfig.from_preset("llama3-1.5b")) == "llama"
