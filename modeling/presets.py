"""Named architectures as data: preset name -> DecoderConfig fields (+ "source", not a field).

The 1.3-2.2B presets are the seed runs' architectures, exactly. Family defaults:
- GPT-2: learned positions, LayerNorm (eps 1e-5), plain MLP with tanh-GELU ("gelu_new"), biases, tied.
- LLaMA 2/3: RoPE, RMSNorm, SwiGLU, no biases, untied (LLaMA 3 adds GQA and theta 500k).
- Qwen3: LLaMA-3-like plus per-head RMSNorm on queries and keys (qk-norm), eps 1e-6, theta 1e6.
The tiny presets (a few hundred K parameters) exist for CPU tests and the demo; their vocabulary
is a placeholder that training replaces with the data manifest's (padded to a multiple of 128).
"""

from __future__ import annotations

from typing import Any

_GPT2 = dict(
    position_embedding="learned", norm_type="layernorm", norm_eps=1e-5, mlp_type="gelu_tanh",
    attention_bias=True, mlp_bias=True, qk_norm=False, tie_word_embeddings=True,
)
_LLAMA = dict(
    position_embedding="rope", norm_type="rmsnorm", norm_eps=1e-5, mlp_type="swiglu",
    attention_bias=False, mlp_bias=False, qk_norm=False, tie_word_embeddings=False,
)
_QWEN3 = dict(_LLAMA, norm_eps=1e-6, qk_norm=True, rope_theta=1_000_000.0)

PRESETS: dict[str, dict[str, Any]] = {
    # --- GPT-2 ---------------------------------------------------------------------------------
    "gpt2-124m": dict(
        _GPT2, vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=1024,
        source="https://huggingface.co/openai-community/gpt2 (vocab padded 50257 -> 50304 as in nanoGPT)",
    ),
    "gpt2-1.36b": dict(
        # 18 heads x 135 = 2430 != 2432: attention projects 2432 -> 2430 through the decoupled
        # head_dim. GPT2LMHeadModel cannot express that, so to_hf refuses this preset.
        _GPT2, vocab_size=50304, hidden_size=2432, num_hidden_layers=18, num_attention_heads=18,
        head_dim=135, intermediate_size=9728, max_position_embeddings=2048,
        source="seed run gpt2_1.36b (2xA6000)",
    ),
    # --- LLaMA 2 / 3 -----------------------------------------------------------------------------
    "llama2-1.36b": dict(
        _LLAMA, vocab_size=32000, hidden_size=2304, num_hidden_layers=18, num_attention_heads=18,
        intermediate_size=6144, rope_theta=10000.0, max_position_embeddings=2048,
        source="seed run llama2_1.36b (2xA6000); tokenizer meta-llama/Llama-2-7b-hf",
    ),
    "llama3-1.5b": dict(
        _LLAMA, vocab_size=128000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=7168, rope_theta=500000.0,
        max_position_embeddings=2048,
        source="seed run llama3_1.5b (2xA6000); tokenizer meta-llama/Meta-Llama-3-8B",
    ),
    "llama3-2.2b": dict(
        _LLAMA, vocab_size=128000, hidden_size=2048, num_hidden_layers=30, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=7168, rope_theta=500000.0,
        max_position_embeddings=2048,
        source="seed run llama3_2.2b (2xA6000); tokenizer meta-llama/Meta-Llama-3-8B",
    ),
    # --- Qwen3 -----------------------------------------------------------------------------------
    "qwen3-1.8b": dict(
        _QWEN3, vocab_size=151643, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=6144, max_position_embeddings=2048,
        source="seed run qwen3_1.8b (2xA6000, 8xB200); tokenizer Qwen/Qwen3-1.7B",
    ),
    # --- tiny CPU presets (tests, demo) ----------------------------------------------------------
    "tiny-gpt2": dict(
        _GPT2, vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=512, source="CPU test preset",
    ),
    "tiny-llama": dict(
        _LLAMA, vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=192, max_position_embeddings=512,
        source="CPU test preset (GQA 4:2)",
    ),
    "tiny-qwen3": dict(
        _QWEN3, vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=192, max_position_embeddings=512,
        source="CPU test preset (GQA 4:2, decoupled head_dim 32)",
    ),
}
