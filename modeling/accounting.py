"""Parameter and FLOPs accounting from the config alone (no weights are allocated), and MFU.

One definition, used everywhere (docs/flops_and_mfu.md, with a worked example and the nanoGPT comparison):
  training FLOPs per token = 6 * N + 12 * L * H * S          (PaLM, Chowdhery et al. 2022, appendix B)
  N = non-embedding parameters + the output projection (the LM head is a matmul even when tied;
      the token/position embeddings are lookups), L = layers, H = n_heads * head_dim, S = sequence length.
  No causal halving of the attention term and no activation-recompute FLOPs, so numbers compare
  with torchtitan's and nanoGPT's.
  MFU = achieved FLOPs/s per GPU / that GPU's dense peak for the dtype in use.
"""

from __future__ import annotations

from .configuration import DecoderConfig

FLOPS_DEFINITION = (
    "PaLM appendix B: 6*N + 12*L*H*S per token (forward+backward), N = non-embedding params + LM head; "
    "no causal halving, no recompute"
)


def _norm_params(config: DecoderConfig, dim: int) -> int:
    return 2 * dim if config.norm_type == "layernorm" else dim  # LayerNorm has a bias


def count_parameters(config: DecoderConfig) -> dict[str, int]:
    """Breakdown of parameter counts; `total` equals the instantiated model's numel sum (tied weights once)."""
    C, L, V, hd = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.head_dim
    nh, nkv, inter = config.num_attention_heads, config.num_key_value_heads, config.intermediate_size

    qkv_out = (nh + 2 * nkv) * hd
    attention = C * qkv_out + nh * hd * C
    if config.attention_bias:
        attention += qkv_out + C
    if config.qk_norm:
        attention += 2 * hd

    n_mats = 3 if config.is_gated_mlp else 2
    mlp = n_mats * C * inter
    if config.mlp_bias:
        mlp += (n_mats - 1) * inter + C

    layer_norms = 2 * _norm_params(config, C)
    per_layer = attention + mlp + layer_norms

    token_embedding = V * C
    position_embedding = config.max_position_embeddings * C if config.position_embedding == "learned" else 0
    final_norm = _norm_params(config, C)
    lm_head = 0 if config.tie_word_embeddings else V * C

    total = token_embedding + position_embedding + L * per_layer + final_norm + lm_head
    return {
        "token_embedding": token_embedding,
        "position_embedding": position_embedding,
        "attention_per_layer": attention,
        "mlp_per_layer": mlp,
        "norms_per_layer": layer_norms,
        "per_layer": per_layer,
        "all_layers": L * per_layer,
        "final_norm": final_norm,
        "lm_head": lm_head,
        "total": total,
        # N of the FLOPs formula: everything but the lookup tables, with the LM head counted as a matmul
        "non_embedding": L * per_layer + final_norm,
        "flops_params": L * per_layer + final_norm + V * C,
    }


def flops_per_token(config: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at sequence length `seq_len`, PaLM definition."""
    n = count_parameters(config)["flops_params"]
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return float(6 * n + attention)


def mfu(tokens_per_sec_per_device: float, flops_per_tok: float, peak_flops_per_sec: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown (e.g. on a CPU)."""
    if not peak_flops_per_sec:
        return None
    return tokens_per_sec_per_device * flops_per_tok / peak_flops_per_sec
