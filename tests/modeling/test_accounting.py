"""Parameter and FLOPs accounting from the config, against instantiated models and hand arithmetic."""

import pytest
import torch

from modeling import PRESETS, DecoderConfig, DecoderForCausalLM, count_parameters, flops_per_token, mfu


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.startswith("tiny-")])
@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"tie_word_embeddings": False, "attention_bias": True}])
def test_count_matches_numel_of_tiny_models(preset, overrides):
    config = DecoderConfig.from_preset(preset, **overrides)
    model = DecoderForCausalLM(config)
    assert count_parameters(config)["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith("tiny-")])
def test_big_presets_on_meta_device(preset):
    """The arithmetic (no allocation) equals the numel of the real module tree built on the meta device."""
    config = DecoderConfig.from_preset(preset)
    with torch.device("meta"):
        model = DecoderForCausalLM(config)
    assert count_parameters(config)["total"] == sum(p.numel() for p in model.parameters())


def test_seed_parameter_counts_by_hand():
    # qwen3-1.8b: per layer attn = 2048*(16+16)*128 + 2048*2048 + 2*128 = 12,583,168;
    # mlp = 3*2048*6144 = 37,748,736; norms 2*2048; embeddings and head 151643*2048 each.
    p = count_parameters(DecoderConfig.from_preset("qwen3-1.8b"))
    assert p["attention_per_layer"] == 12_583_168
    assert p["mlp_per_layer"] == 37_748_736
    assert p["total"] == 24 * (12_583_168 + 37_748_736 + 4096) + 2048 + 2 * 151643 * 2048 == 1_829_195_776
    # gpt2-124m with nanoGPT's padded vocab: 124,475,904 (nanoGPT reports 124.47M incl. wpe)
    assert count_parameters(DecoderConfig.from_preset("gpt2-124m"))["total"] == 124_475_904


def test_flops_per_token_palm_definition():
    config = DecoderConfig.from_preset("llama3-1.5b")
    # N = 18 layers x (attn 2048*32*128 + 2048*2048 = 12,582,912; mlp 3*2048*7168 = 44,040,192; norms 4096)
    #     + final norm 2048 + LM head 128000*2048
    n = 18 * (12_582_912 + 44_040_192 + 4096) + 2048 + 128000 * 2048
    assert flops_per_token(config, 2048) == 6 * n + 12 * 18 * 16 * 128 * 2048
    # a tied head still counts as a matmul
    tied = DecoderConfig.from_preset("llama3-1.5b", tie_word_embeddings=True)
    assert flops_per_token(tied, 2048) == flops_per_token(config, 2048)


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 989e12) == pytest.approx(1000 * 6e9 / 989e12)
    assert mfu(1000.0, 6e9, None) is None
