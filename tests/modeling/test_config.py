"""DecoderConfig validation and presets."""

import json
import subprocess
import sys

import pytest

from modeling import PRESETS, DecoderConfig


def test_presets_have_the_seed_architectures():
    q = DecoderConfig.from_preset("qwen3-1.8b")
    assert (q.num_hidden_layers, q.hidden_size, q.num_attention_heads, q.num_key_value_heads, q.head_dim) == (24, 2048, 16, 8, 128)
    assert (q.intermediate_size, q.rope_theta, q.norm_eps, q.qk_norm, q.vocab_size, q.tie_word_embeddings) == (6144, 1e6, 1e-6, True, 151643, False)
    g = DecoderConfig.from_preset("gpt2-1.36b")
    assert (g.num_hidden_layers, g.hidden_size, g.num_attention_heads, g.head_dim, g.intermediate_size) == (18, 2432, 18, 135, 9728)
    assert (g.position_embedding, g.norm_type, g.attention_bias, g.vocab_size, g.tie_word_embeddings) == ("learned", "layernorm", True, 50304, True)
    l2 = DecoderConfig.from_preset("llama2-1.36b")
    assert (l2.num_hidden_layers, l2.hidden_size, l2.num_attention_heads, l2.intermediate_size, l2.rope_theta, l2.vocab_size) == (18, 2304, 18, 6144, 10000.0, 32000)
    l3 = DecoderConfig.from_preset("llama3-2.2b")
    assert (l3.num_hidden_layers, l3.num_key_value_heads, l3.intermediate_size, l3.rope_theta, l3.vocab_size) == (30, 8, 7168, 500000.0, 128000)
    for name in ("tiny-gpt2", "tiny-llama", "tiny-qwen3", "gpt2-124m", "llama3-1.5b"):
        assert name in PRESETS


def test_overrides_apply():
    c = DecoderConfig.from_preset("tiny-llama", num_hidden_layers=5, vocab_size=4096)
    assert (c.num_hidden_layers, c.vocab_size) == (5, 4096)


@pytest.mark.parametrize("kwargs,field", [
    (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(mlp_type="geglu"), "mlp_type"),
    (dict(position_embedding="alibi"), "position_embedding"),
    (dict(head_dim=15, num_attention_heads=4), "head_dim"),
    (dict(attn_implementation="flash3"), "attn_implementation"),
])
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"DecoderConfig\.{field}"):
        DecoderConfig.from_preset("tiny-llama", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hiden_size=64), r"no field 'hiden_size'; did you mean hidden_size\?"),  # PreTrainedConfig would keep it unused
    (dict(hidden_size="abc"), r"DecoderConfig\.hidden_size: .*expected int, got str"),
    (dict(qk_norm="yes"), r"DecoderConfig\.qk_norm: .*expected bool"),
    (dict(num_hidden_layers=True), r"DecoderConfig\.num_hidden_layers: .*expected int, got bool"),
])
def test_overrides_with_unknown_names_or_wrong_types_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig.from_preset("tiny-llama", **kwargs)


def test_int_overrides_of_float_fields_are_promoted():
    c = DecoderConfig.from_preset("tiny-llama", rope_theta=500000, dropout=0)
    assert (c.rope_theta, c.dropout) == (500000.0, 0.0) and isinstance(c.rope_theta, float)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown preset 'llama9'.*qwen3-1\.8b.*tiny-llama"):
        DecoderConfig.from_preset("llama9")


def test_config_json_roundtrip(tmp_path):
    c = DecoderConfig.from_preset("tiny-qwen3")
    c.save_pretrained(tmp_path)
    back = DecoderConfig.from_pretrained(tmp_path)
    for f in ("head_dim", "qk_norm", "num_key_value_heads", "rope_theta", "norm_type"):
        assert getattr(back, f) == getattr(c, f)


def test_describe_cli_big_preset_without_allocation():
    res = subprocess.run([sys.executable, "-m", "modeling.describe", "qwen3-1.8b", "--seq-len", "2048", "--json", "-"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["parameters"]["total"] == 1_829_195_776
    assert info["flops_per_token"] > 1e10
    res = subprocess.run([sys.executable, "-m", "modeling.describe", "nope"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "known presets" in res.stderr


def test_learned_position_table_length_is_checked_in_one_place():
    """DecoderConfig.check_seq_len: the error training, the benchmarks and the model's forward raise."""
    import torch

    from modeling import DecoderForCausalLM

    gpt2 = DecoderConfig.from_preset("tiny-gpt2")
    gpt2.check_seq_len(gpt2.max_position_embeddings)  # fits exactly
    with pytest.raises(ValueError, match=rf"seq_len={gpt2.max_position_embeddings + 1} exceeds the learned position table"):
        gpt2.check_seq_len(gpt2.max_position_embeddings + 1)
    DecoderConfig.from_preset("tiny-llama").check_seq_len(10**6)  # RoPE: no table
    model = DecoderForCausalLM(gpt2)
    with pytest.raises(ValueError, match="sequence length=.* exceeds the learned position table"):
        model(input_ids=torch.zeros(1, gpt2.max_position_embeddings + 1, dtype=torch.long))
