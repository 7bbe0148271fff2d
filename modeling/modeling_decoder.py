"""One configurable decoder-only transformer for GPT-2, LLaMA 2/3 and Qwen3.

Reads top to bottom: norms, rotary embedding, MLPs, attention, block, model, LM head.
Weights follow the HF conventions (rotate-half RoPE, RMSNorm computed in float32, GPT-2 tanh-GELU)
so `to_hf` / `from_hf` copy tensors without permutations; q/k/v and gate/up are fused into one
matmul each (fewer, larger GEMMs) and split on export.
This module knows nothing of training: precision, compile, activation checkpointing and
parallelism are applied by `training/`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention import ATTENTION_FUNCTIONS, Documents, documents_from_position_ids, resolve_attn_implementation
from .configuration import DecoderConfig
from .losses import linear_cross_entropy

logger = logging.getLogger(__name__)

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: generate() passes it under
# the new name and the output classes store it under the new field (the old one is a warning alias).
# Our forwards take both names; outputs are built with whichever field this transformers declares.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _one_cache(cache: Optional[Cache], past_key_values: Optional[Cache]) -> Optional[Cache]:
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache once, as `cache` (or `past_key_values` on transformers < 5.24)")
    return cache if cache is not None else past_key_values


# ----------------------------------------------------------------------------------------------
# Norms
# ----------------------------------------------------------------------------------------------
def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim, computed in float32 and returned in x's dtype (HF LLaMA/Qwen3 rounding).
    F.rms_norm is one fused kernel (and backward) on CUDA instead of pow/mean/add/rsqrt/mul; same values."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) computed in float32, then scaled in the input dtype (as HF LLaMA/Qwen3)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalize(x, self.eps)


def build_norm(config: DecoderConfig, dim: int) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


def build_dropout(p: float) -> nn.Module:
    """nn.Dropout(0.0) still dispatches an op per call in training (3 per block); Identity costs nothing."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (Su et al. 2021), rotate-half convention
# ----------------------------------------------------------------------------------------------
def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sign-folded sin tables (B, T, 1, hd) for positions (B, T); computed in float32, no buffers
    (cheap, compile-friendly). sin carries rotate_half's sign: (-sin, +sin) over the two halves."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = (position_ids.float()[..., None] * inv_freq)[:, :, None, :]  # (B, T, 1, hd/2): broadcasts over heads
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, hd). Rotates channel i with channel i + hd/2 (HF's rotate_half layout):
    x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) = roll(x, hd/2) * (-1, +1) and the
    sign folded into `sin` (rope_cos_sin): 3 kernels (roll, mul, addcmul) instead of 5 (neg, cat, mul, mul, add)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


# ----------------------------------------------------------------------------------------------
# MLPs
# ----------------------------------------------------------------------------------------------
_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Plain 2-layer MLP: down(act(up(x)))."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act = _ACTIVATIONS[config.mlp_type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): down(silu(gate(x)) * up(x)), gate and up fused into one matmul."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.num_attention_heads
        self.n_kv_head = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_dim, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=config.attention_bias)
        if config.qk_norm:  # per-head RMSNorm over head_dim, before RoPE (Qwen3)
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)

    def forward(self, x, rope, mask, cache: Optional[Cache], documents: Optional[Documents] = None):
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim)  # (B, T, nkv, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim)  # (B, T, nkv, hd)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # the HF cache stores (B, H, T, hd)
            k, v = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Tk, nkv, hd)
        attn = ATTENTION_FUNCTIONS[self.config._attn_implementation]
        causal = mask is None and q.shape[1] == k.shape[1]  # Tq == 1 over a cache needs no mask at all
        dropout_p = self.config.dropout if self.training else 0.0
        y = attn(q, k, v, causal=causal, mask=mask, dropout_p=dropout_p, scale=self.scale,
                 documents=documents)  # (B, T, nh, hd)
        return self.o_proj(y.reshape(B, T, self.n_head * self.head_dim))


# ----------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------
class DecoderBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DecoderConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = build_norm(config, config.hidden_size)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = build_norm(config, config.hidden_size)
        self.mlp = SwiGLU(config) if config.is_gated_mlp else MLP(config)
        self.dropout = build_dropout(config.dropout)

    def forward(self, x, rope=None, mask=None, cache=None, documents=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), rope, mask, cache, documents))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
class DecoderPreTrainedModel(PreTrainedModel):
    config_class = DecoderConfig
    config: DecoderConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # the pre-v5 spelling, for tools that still read it

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs) -> str:
        """HF's hook for choosing the backend, replaced by ours: "auto" falls back (and says why), an
        explicit request that cannot run raises with what to install; our flash path calls flash_attn directly."""
        name, reason = resolve_attn_implementation(attn_implementation)
        if attn_implementation in (None, "auto") and not getattr(self, "attn_backend_reason", None):
            logger.info("attention: %s (%s)", name, reason)
        self.attn_backend_reason = reason
        return name

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for matrices; residual output projections scaled by 1/sqrt(2L) (GPT-2 paper)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            is_residual_out = getattr(module, "_is_residual_out", False)
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers) if is_residual_out else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class DecoderModel(DecoderPreTrainedModel):
    """Embeddings -> blocks -> final norm; returns hidden states (B, T, hidden)."""

    def __init__(self, config: DecoderConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = build_dropout(config.dropout)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = build_norm(config, config.hidden_size)
        for block in self.layers:
            block.self_attn.o_proj._is_residual_out = True
            block.mlp.down_proj._is_residual_out = True
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        past_key_values: Optional[Cache] = None,
        document_masking: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`document_masking=True` (packed training rows): `position_ids` restart at 0 at each document
        start, and attention stays inside each document (RoPE / learned positions restart with them).
        Off by default: the plain causal fast path, position_ids only moving the positions."""
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T = x.shape[:2]
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0

        # A mask that is all ones is no mask: check it here (a host sync, only when a mask is passed:
        # generation and evaluation; the training loop passes none) so the fast causal kernels run.
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if document_masking and (position_ids is None or past_len or attention_mask is not None):
            raise ValueError(
                "document_masking=True needs position_ids restarting at 0 at each document start, and no "
                "tokens in the KV cache and no attention_mask with zeros (packed training rows only)"
            )
        if position_ids is None:
            if attention_mask is not None:  # left padding: positions count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_len, past_len + T, device=x.device).unsqueeze(0)  # (1, T)
        mask = _build_mask(attention_mask, B, T, past_len, x.device)
        documents = None
        if document_masking:  # the training path: whole packed rows, nothing cached, no padding
            position_ids = position_ids.expand(B, T)  # (1, T) broadcasts: the documents are per row
            documents = documents_from_position_ids(position_ids, self.config._attn_implementation)

        if self.config.position_embedding == "learned":
            self.config.check_seq_len(past_len + T, "sequence length")
            x = x + self.embed_positions(position_ids)
            rope = None
        else:
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        x = self.dropout(x)
        for block in self.layers:
            x = block(x, rope, mask, cache, documents)
        x = self.norm(x)
        return BaseModelOutputWithPast(last_hidden_state=x, **{CACHE_FIELD: cache if use_cache else None})


def _build_mask(attention_mask, B: int, T: int, past_len: int, device) -> Optional[torch.Tensor]:
    """Boolean (B, 1, T, past+T) mask, True = may attend; None when plain causal (or T == 1) suffices."""
    if attention_mask is None and (past_len == 0 or T == 1):
        return None
    total = past_len + T
    q_pos = torch.arange(past_len, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, total), causal aligned to the end of the keys
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -total:].bool()
        mask = mask | (k_pos == q_pos)[None, None]  # a padded query attends to itself: no all-masked rows (NaN)
    return mask.expand(B, 1, T, total)


class DecoderForCausalLM(DecoderPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Tokens per chunk of the chunked LM-head loss (forward(..., return_logits=False)); None: sized from
    # the vocabulary (losses.auto_chunk_size). Set per instance to trade transient memory against the
    # number of chunks. Not a config field: it changes no result, only memory and speed.
    loss_chunk_size: Optional[int] = None

    def __init__(self, config: DecoderConfig):
        super().__init__(config)
        self.model = DecoderModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache: Optional[Cache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        shift_labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
        past_key_values: Optional[Cache] = None,
        document_masking: bool = False,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`labels` follow the HF convention (aligned with input_ids, shifted here); `shift_labels` are
        already the next tokens (what `data_prep.PackedTokenDataset` yields). -100 is ignored in both.

        `return_logits=False` with labels: the loss is computed by `losses.linear_cross_entropy` in chunks
        of `self.loss_chunk_size` tokens, the (B, T, V) logits never exist and `logits` is None (the
        training fast path: less memory at 128k-152k vocabularies, no fp32 logits copy). Without labels
        the logits are returned either way.

        `document_masking=True` with `position_ids` that restart at 0 at each document start (what
        `data_prep.PackedTokenDataset(document_positions=True)` yields): each document of a packed row
        attends only to itself, as if run alone (see DecoderModel.forward). Costs: eager/SDPA take a
        (B, 1, T, T) mask (SDPA on CUDA leaves its flash kernel for the memory-efficient one),
        flash_attention_2 runs its varlen kernel after one host sync per forward."""
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=_one_cache(cache, past_key_values), inputs_embeds=inputs_embeds, use_cache=use_cache,
            document_masking=document_masking,
        )
        kv = {CACHE_FIELD: getattr(out, CACHE_FIELD)}
        h = out.last_hidden_state  # (B, T, C)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        if labels is not None and shift_labels is None:
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)  # position t predicts token t+1
        if shift_labels is not None and not return_logits:
            weight = self.lm_head.weight
            # The chunked loss reads the head's weight outside lm_head.forward. Frameworks that gather
            # parameters in module hooks (DeepSpeed ZeRO-3: an empty placeholder between forwards) leave
            # it unmaterialised here: then take the plain path, which runs through lm_head's hooks.
            if weight.shape == (self.config.vocab_size, h.shape[-1]):
                loss = linear_cross_entropy(h, weight, shift_labels, chunk_size=self.loss_chunk_size)
                return CausalLMOutputWithPast(loss=loss, logits=None, **kv)
            if not getattr(self, "_warned_chunked_loss", False):
                logger.warning("return_logits=False: lm_head.weight is %s here (partitioned, e.g. ZeRO-3), "
                               "so the loss uses the full-logits path", tuple(weight.shape))
                self._warned_chunked_loss = True
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if shift_labels is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), shift_labels.reshape(-1).to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **kv)
