"""DecoderConfig: one configuration for every decoder family (GPT-2, LLaMA 2/3, Qwen3).

A family is a set of field values (see `presets.py`), never a name test: norm type, MLP type,
position embedding, GQA, qk-norm, biases and tying are explicit fields. Derived values
(`head_dim` when unset, `num_key_value_heads` when unset) are computed once here, and every
invalid combination fails at construction with an error naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Any

from huggingface_hub.dataclasses import strict, type_validator
from transformers import PreTrainedConfig

from .names import ATTN_IMPLEMENTATIONS

NORM_TYPES = ("layernorm", "rmsnorm")
MLP_TYPES = ("swiglu", "gelu", "gelu_tanh", "relu", "silu")  # all but swiglu are a plain 2-layer MLP
POSITION_EMBEDDINGS = ("learned", "rope")


@strict(accept_kwargs=True)
class DecoderConfig(PreTrainedConfig):
    """Configuration of a decoder-only transformer (pre-norm blocks: x + attn(norm(x)), x + mlp(norm(x)))."""

    model_type = "llmstack_decoder"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 32000  # rows of the token embedding (and of the LM head)
    hidden_size: int = 768  # residual stream width
    num_hidden_layers: int = 12  # number of transformer blocks
    num_attention_heads: int = 12  # query heads
    num_key_value_heads: int | None = None  # key/value heads (GQA); None -> num_attention_heads (MHA)
    head_dim: int | None = None  # per-head width; None -> hidden_size // num_attention_heads (may be decoupled)
    intermediate_size: int = 3072  # MLP inner width (per branch for SwiGLU)
    position_embedding: str = "rope"  # "learned" (GPT-2 absolute table) or "rope" (rotary, LLaMA/Qwen)
    rope_theta: float = 10000.0  # RoPE base frequency (ignored for learned positions)
    norm_type: str = "rmsnorm"  # "layernorm" (with bias, GPT-2) or "rmsnorm" (LLaMA/Qwen)
    norm_eps: float = 1e-5  # epsilon inside every norm
    mlp_type: str = "swiglu"  # "swiglu", or a plain MLP with activation "gelu" | "gelu_tanh" | "relu" | "silu"
    attention_bias: bool = False  # bias on the q/k/v and output projections
    mlp_bias: bool = False  # bias on the MLP projections
    qk_norm: bool = False  # RMSNorm on each query/key head before RoPE (Qwen3)
    tie_word_embeddings: bool = False  # LM head shares the token-embedding matrix
    max_position_embeddings: int = 2048  # longest sequence (size of the learned table; RoPE cache hint)
    initializer_range: float = 0.02  # std of the normal init of weight matrices
    dropout: float = 0.0  # dropout on embeddings, attention probabilities and residual branches
    use_cache: bool = True  # return a KV cache from forward (generation)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            _check(self.num_attention_heads > 0, "num_attention_heads", f"must be positive, got {self.num_attention_heads}")
            _check(
                self.hidden_size % self.num_attention_heads == 0,
                "hidden_size",
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; "
                "change one of them or set head_dim explicitly",
            )
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Fail at construction, naming the field and the fix."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings"):
            _check(getattr(self, name) > 0, name, f"must be a positive integer, got {getattr(self, name)}")
        _check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
            f"{self.num_attention_heads} (each KV head serves a whole group of query heads)",
        )
        _check(self.norm_type in NORM_TYPES, "norm_type", f"unknown norm_type {self.norm_type!r}; choose one of {NORM_TYPES}")
        _check(self.mlp_type in MLP_TYPES, "mlp_type", f"unknown mlp_type {self.mlp_type!r}; choose one of {MLP_TYPES}")
        _check(
            self.position_embedding in POSITION_EMBEDDINGS,
            "position_embedding",
            f"unknown position_embedding {self.position_embedding!r}; choose one of {POSITION_EMBEDDINGS}",
        )
        if self.position_embedding == "rope":
            _check(self.head_dim % 2 == 0, "head_dim", f"RoPE rotates pairs of channels: head_dim={self.head_dim} must be even")
            _check(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        attn = self._attn_implementation
        _check(
            attn is None or attn in ATTN_IMPLEMENTATIONS,
            "attn_implementation",
            f"unknown attention backend {attn!r}; choose one of {ATTN_IMPLEMENTATIONS}",
        )

    def check_seq_len(self, seq_len: int, what: str = "seq_len") -> None:
        """A learned position table has one row per position: longer sequences cannot be embedded
        (RoPE has no such limit). One error for training, planning, benchmarks and generation."""
        if self.position_embedding == "learned" and seq_len > self.max_position_embeddings:
            raise ValueError(
                f"{what}={seq_len} exceeds the learned position table (max_position_embeddings="
                f"{self.max_position_embeddings}); use a shorter sequence or set max_position_embeddings >= {seq_len}"
            )

    @property
    def is_gated_mlp(self) -> bool:
        return self.mlp_type == "swiglu"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "DecoderConfig":
        """Build a config from a named preset in `modeling.presets.PRESETS`, with field overrides."""
        from .presets import PRESETS

        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        fields = {k: v for k, v in PRESETS[name].items() if k != "source"}
        fields.update({k: _checked_override(cls, k, v) for k, v in overrides.items()})
        config = cls(**fields)
        config.preset_name = name
        return config


# Keyword arguments of PreTrainedConfig that overrides may carry besides DecoderConfig's own fields.
_CONFIG_KWARGS = ("attn_implementation",)


def _checked_override(cls, name: str, value: Any) -> Any:
    """An override must name a field (a typo would otherwise be stored as an unused attribute:
    PreTrainedConfig accepts any keyword) and have its type (an int where a float is declared is
    promoted); anything else fails here, naming the field, instead of deep in validation."""
    # the types DecoderConfig itself declares (PreTrainedConfig's own fields are named, not typed, here)
    hints = {k: eval(t, vars(sys.modules[cls.__module__])) if isinstance(t, str) else t  # noqa: S307 - our annotations
             for k, t in cls.__dict__.get("__annotations__", {}).items()}
    declared = {f.name for f in dataclasses.fields(cls)}
    if name not in declared and name not in _CONFIG_KWARGS:
        close = difflib.get_close_matches(name, sorted(declared), n=3)
        raise ValueError(f"DecoderConfig has no field {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                         f"; fields: {', '.join(sorted(declared))}"))
    if name not in hints:
        return value
    try:
        type_validator(name, value, hints[name])
    except TypeError as exc:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                type_validator(name, float(value), hints[name])
                return float(value)
            except TypeError:
                pass
        raise ValueError(f"DecoderConfig.{name}: {exc}") from None
    return value


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"DecoderConfig.{field}: {message}")
