"""Conversion to and from the native transformers classes.

`to_hf(model)` returns a `GPT2LMHeadModel`, `LlamaForCausalLM` or `Qwen3ForCausalLM` with the same
weights (and hence the same logits) whenever the config is expressible in that class, and raises
a clear error naming the field otherwise. `from_hf(hf_model)` goes the other way. The family is
decided by field values (qk-norm -> Qwen3, RoPE+RMSNorm+SwiGLU -> LLaMA, learned+LayerNorm+MLP
-> GPT-2), never by a name.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
import transformers
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .configuration import DecoderConfig
from .modeling_decoder import DecoderForCausalLM

logger = logging.getLogger(__name__)

_GPT2_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


class NotExportableError(ValueError):
    """The config uses a feature the native transformers class cannot express."""


# ----------------------------------------------------------------------------------------------
# Family detection and config conversion
# ----------------------------------------------------------------------------------------------
def hf_family(config: DecoderConfig) -> str:
    """'gpt2', 'llama' or 'qwen3': the native class that can hold this config, or NotExportableError."""
    c = config

    def need(ok: bool, family: str, what: str) -> None:
        if not ok:
            raise NotExportableError(f"cannot export to {family}: {what}")

    if c.position_embedding == "learned":
        family = "GPT2LMHeadModel"
        need(c.norm_type == "layernorm", family, f"norm_type={c.norm_type!r}, GPT-2 uses 'layernorm'")
        need(not c.is_gated_mlp, family, f"mlp_type={c.mlp_type!r}, GPT-2 has a plain MLP")
        need(c.attention_bias and c.mlp_bias, family, "GPT-2 has biases on every projection (attention_bias and mlp_bias must be True)")
        need(not c.qk_norm, family, "qk_norm=True has no GPT-2 equivalent")
        need(c.num_key_value_heads == c.num_attention_heads, family, "GPT-2 has no grouped-query attention")
        need(
            c.num_attention_heads * c.head_dim == c.hidden_size, family,
            f"num_attention_heads x head_dim = {c.num_attention_heads} x {c.head_dim} = "
            f"{c.num_attention_heads * c.head_dim} != hidden_size {c.hidden_size}; GPT-2 ties the head width to "
            "hidden_size / n_head (e.g. 19 heads x 128 = 2432 would export)",
        )
        return "gpt2"
    family = "Qwen3ForCausalLM" if c.qk_norm else "LlamaForCausalLM"
    need(c.norm_type == "rmsnorm", family, f"norm_type={c.norm_type!r}, it uses 'rmsnorm'")
    need(c.is_gated_mlp, family, f"mlp_type={c.mlp_type!r}, it uses 'swiglu'")
    if c.qk_norm:
        need(not c.mlp_bias, family, "Qwen3's MLP has no bias (mlp_bias must be False)")
        return "qwen3"
    return "llama"


def to_hf_config(config: DecoderConfig):
    family = hf_family(config)
    common = dict(
        vocab_size=config.vocab_size, tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
            n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
            activation_function=_GPT2_ACT[config.mlp_type], layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common,
        )
    kwargs = dict(
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=config.attention_bias, attention_dropout=config.dropout, **common,
    )
    if family == "qwen3":
        return transformers.Qwen3Config(use_sliding_window=False, **kwargs)
    return transformers.LlamaConfig(mlp_bias=config.mlp_bias, **kwargs)


def from_hf_config(hf_config) -> DecoderConfig:
    common = dict(
        vocab_size=hf_config.vocab_size, tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        initializer_range=hf_config.initializer_range, bos_token_id=hf_config.bos_token_id,
        eos_token_id=hf_config.eos_token_id, pad_token_id=getattr(hf_config, "pad_token_id", None),
    )
    model_type = hf_config.model_type
    if model_type == "gpt2":
        act = {v: k for k, v in _GPT2_ACT.items()}.get(hf_config.activation_function)
        if act is None:
            raise NotExportableError(f"GPT-2 activation {hf_config.activation_function!r} is not supported")
        return DecoderConfig(
            hidden_size=hf_config.n_embd, num_hidden_layers=hf_config.n_layer,
            num_attention_heads=hf_config.n_head, intermediate_size=hf_config.n_inner or 4 * hf_config.n_embd,
            max_position_embeddings=hf_config.n_positions, position_embedding="learned",
            norm_type="layernorm", norm_eps=hf_config.layer_norm_epsilon, mlp_type=act,
            attention_bias=True, mlp_bias=True, qk_norm=False, dropout=float(hf_config.resid_pdrop), **common,
        )
    if model_type in ("llama", "qwen3"):
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotExportableError(f"hidden_act={hf_config.hidden_act!r}: only SwiGLU (silu) is supported")
        rope = hf_config.rope_parameters or {}
        if rope.get("rope_type", "default") != "default":
            raise NotExportableError(f"rope_type={rope.get('rope_type')!r}: only default RoPE is supported")
        if model_type == "qwen3" and getattr(hf_config, "use_sliding_window", False):
            raise NotExportableError("Qwen3 sliding-window attention is not supported")
        return DecoderConfig(
            hidden_size=hf_config.hidden_size, num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=hf_config.num_attention_heads, num_key_value_heads=hf_config.num_key_value_heads,
            head_dim=hf_config.head_dim, intermediate_size=hf_config.intermediate_size,
            max_position_embeddings=hf_config.max_position_embeddings, position_embedding="rope",
            rope_theta=float(rope.get("rope_theta", 10000.0)), norm_type="rmsnorm", norm_eps=hf_config.rms_norm_eps,
            mlp_type="swiglu", attention_bias=bool(hf_config.attention_bias),
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)), qk_norm=model_type == "qwen3",
            dropout=float(hf_config.attention_dropout or 0.0), **common,
        )
    raise NotExportableError(f"model_type {model_type!r} is not supported; expected gpt2, llama or qwen3")


# ----------------------------------------------------------------------------------------------
# Weight conversion. Each rule maps our tensor(s) to native tensor(s); GPT-2's Conv1D stores W^T.
# ----------------------------------------------------------------------------------------------
def _layer_rules(config: DecoderConfig, family: str, i: int) -> list[tuple[str, list[str], Callable, Callable]]:
    """(our key, native keys, ours -> natives, natives -> ours) for layer i."""
    ident = (lambda t: [t], lambda ts: ts[0])
    ours = f"model.layers.{i}."
    q_dim = config.num_attention_heads * config.head_dim
    kv_dim = config.num_key_value_heads * config.head_dim
    split_qkv = (lambda t: list(t.split([q_dim, kv_dim, kv_dim], dim=0)), lambda ts: torch.cat(ts, dim=0))
    split_gate_up = (lambda t: list(t.chunk(2, dim=0)), lambda ts: torch.cat(ts, dim=0))
    tr = (lambda t: [t.t()], lambda ts: ts[0].t())
    rules = []
    if family == "gpt2":
        hf = f"transformer.h.{i}."
        for p in ("weight", "bias"):
            rules += [
                (f"{ours}input_layernorm.{p}", [f"{hf}ln_1.{p}"], *ident),
                (f"{ours}post_attention_layernorm.{p}", [f"{hf}ln_2.{p}"], *ident),
            ]
        rules += [
            (f"{ours}self_attn.qkv_proj.weight", [f"{hf}attn.c_attn.weight"], *tr),
            (f"{ours}self_attn.qkv_proj.bias", [f"{hf}attn.c_attn.bias"], *ident),
            (f"{ours}self_attn.o_proj.weight", [f"{hf}attn.c_proj.weight"], *tr),
            (f"{ours}self_attn.o_proj.bias", [f"{hf}attn.c_proj.bias"], *ident),
            (f"{ours}mlp.up_proj.weight", [f"{hf}mlp.c_fc.weight"], *tr),
            (f"{ours}mlp.up_proj.bias", [f"{hf}mlp.c_fc.bias"], *ident),
            (f"{ours}mlp.down_proj.weight", [f"{hf}mlp.c_proj.weight"], *tr),
            (f"{ours}mlp.down_proj.bias", [f"{hf}mlp.c_proj.bias"], *ident),
        ]
        return rules
    hf = f"model.layers.{i}."
    rules += [
        (f"{ours}input_layernorm.weight", [f"{hf}input_layernorm.weight"], *ident),
        (f"{ours}post_attention_layernorm.weight", [f"{hf}post_attention_layernorm.weight"], *ident),
        (f"{ours}self_attn.o_proj.weight", [f"{hf}self_attn.o_proj.weight"], *ident),
        (f"{ours}mlp.down_proj.weight", [f"{hf}mlp.down_proj.weight"], *ident),
        (f"{ours}mlp.gate_up_proj.weight", [f"{hf}mlp.gate_proj.weight", f"{hf}mlp.up_proj.weight"], *split_gate_up),
    ]
    qkv_names = [f"{hf}self_attn.{n}_proj" for n in "qkv"]
    rules.append((f"{ours}self_attn.qkv_proj.weight", [f"{n}.weight" for n in qkv_names], *split_qkv))
    if config.attention_bias:
        rules.append((f"{ours}self_attn.qkv_proj.bias", [f"{n}.bias" for n in qkv_names], *split_qkv))
        rules.append((f"{ours}self_attn.o_proj.bias", [f"{hf}self_attn.o_proj.bias"], *ident))
    if config.mlp_bias:
        rules.append((f"{ours}mlp.gate_up_proj.bias", [f"{hf}mlp.gate_proj.bias", f"{hf}mlp.up_proj.bias"], *split_gate_up))
        rules.append((f"{ours}mlp.down_proj.bias", [f"{hf}mlp.down_proj.bias"], *ident))
    if config.qk_norm:
        rules.append((f"{ours}self_attn.q_norm.weight", [f"{hf}self_attn.q_norm.weight"], *ident))
        rules.append((f"{ours}self_attn.k_norm.weight", [f"{hf}self_attn.k_norm.weight"], *ident))
    return rules


def _rules(config: DecoderConfig, family: str):
    ident = (lambda t: [t], lambda ts: ts[0])
    if family == "gpt2":
        rules = [
            ("model.embed_tokens.weight", ["transformer.wte.weight"], *ident),
            ("model.embed_positions.weight", ["transformer.wpe.weight"], *ident),
            ("model.norm.weight", ["transformer.ln_f.weight"], *ident),
            ("model.norm.bias", ["transformer.ln_f.bias"], *ident),
        ]
    else:
        rules = [
            ("model.embed_tokens.weight", ["model.embed_tokens.weight"], *ident),
            ("model.norm.weight", ["model.norm.weight"], *ident),
        ]
    if not config.tie_word_embeddings:
        rules.append(("lm_head.weight", ["lm_head.weight"], *ident))
    for i in range(config.num_hidden_layers):
        rules += _layer_rules(config, family, i)
    return rules


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict that allows only tied weights and non-persistent buffers to be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"weight conversion mismatch: missing={missing} unexpected={unexpected}")


@torch.no_grad()
def build_with_weights(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], device=None,
                       dtype=None, training: bool = False) -> torch.nn.Module:
    """`build()` without random init (real storage: buffers such as RoPE's inv_freq are computed as
    usual), moved to device/dtype, loaded strictly from `state`, tied, in train or eval mode."""
    with no_init_weights():
        model = build()
    model.to(device=device, dtype=dtype)
    _load_exactly(model, state)
    model.tie_weights()
    return model.train(training)


@torch.no_grad()
def to_hf(model: DecoderForCausalLM) -> PreTrainedModel:
    """A native transformers model with the same weights (and logits) as `model`."""
    config = model.config
    family = hf_family(config)
    hf_config = to_hf_config(config)
    hf_config._attn_implementation = "eager" if config._attn_implementation == "eager" else "sdpa"
    # the native classes load lazily (transformers' module attributes): describing a preset stays fast
    cls = getattr(transformers, {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family])
    ours = model.state_dict()
    state = {}
    for our_key, hf_keys, forward, _ in _rules(config, family):
        for key, tensor in zip(hf_keys, forward(ours[our_key])):
            state[key] = tensor.contiguous().clone()
    param = next(model.parameters())
    return build_with_weights(lambda: cls(hf_config), state, param.device, param.dtype, model.training)


@torch.no_grad()
def from_hf(hf_model: PreTrainedModel, attn_implementation: str | None = None) -> DecoderForCausalLM:
    """Our model with the same weights (and logits) as a native GPT-2 / LLaMA / Qwen3 model."""
    config = from_hf_config(hf_model.config)
    config._attn_implementation = attn_implementation or "auto"
    family = hf_family(config)
    theirs = hf_model.state_dict()
    state = {}
    for our_key, hf_keys, _, backward in _rules(config, family):
        missing = [k for k in hf_keys if k not in theirs]
        if missing:
            raise RuntimeError(f"native checkpoint lacks {missing}")
        state[our_key] = backward([theirs[k] for k in hf_keys]).contiguous().clone()
    param = next(hf_model.parameters())
    return build_with_weights(lambda: DecoderForCausalLM(config), state, param.device, param.dtype, hf_model.training)


def export_hf(model: DecoderForCausalLM, out_dir: str | os.PathLike, tokenizer=None, max_length: int | None = None) -> str:
    """Write the native-class checkpoint (safetensors + config [+ tokenizer]) loadable with plain
    `AutoModelForCausalLM.from_pretrained(out_dir)`, no trust_remote_code, no import of this package.
    With a tokenizer, the folder also carries its special-token ids and, given `max_length` (the
    trained seq_len), its context length: see `finish_export`."""
    hf_model = to_hf(model)
    hf_model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
        finish_export(out_dir, tokenizer, max_length)
    return str(out_dir)


# ----------------------------------------------------------------------------------------------
# What every export folder must say about its tokenizer (the ONE place: checkpoint model/ and hf/,
# and eval.hub, all call finish_export)
# ----------------------------------------------------------------------------------------------
SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def special_token_ids(tokenizer) -> dict[str, int]:
    """{"bos_token_id", "eos_token_id", "pad_token_id"}: those of the three the tokenizer defines."""
    ids = {field: getattr(tokenizer, field, None) for field in SPECIAL_TOKEN_FIELDS}
    return {field: int(i) for field, i in ids.items() if isinstance(i, int) and not isinstance(i, bool)}


def _merge_ids(where: str, current: dict, ids: dict[str, int]) -> dict:
    """`current` with the tokenizer's ids. The tokenizer is what the model was trained on, so it wins;
    an eos list that already holds the tokenizer's eos (chat models: several stop tokens) is kept."""
    out = dict(current)
    for field, value in ids.items():
        old = out.get(field)
        if old is None or old == value or (isinstance(old, list) and value in old):
            out[field] = value if old is None else old
            continue
        logger.warning("%s: %s %s replaced by the tokenizer's %s", where, field, old, value)
        out[field] = value
    return out


def finish_export(out_dir: str | os.PathLike, tokenizer=None, max_length: int | None = None) -> None:
    """Make a saved model folder generate and tokenize as trained, in place.

    Without this, `generate()` / `pipeline("text-generation")` on an export never stop at the
    end-of-text token (config and generation config carry `eos_token_id: null`) and the tokenizer
    accepts any length (`model_max_length` 1e30). Writes:
      - config.json and generation_config.json: the tokenizer's bos / eos / pad ids (those it has);
      - tokenizer_config.json (if the folder holds a tokenizer): `model_max_length = max_length`,
        the context the model was trained at (seq_len), when given.
    Works on any `save_pretrained` folder (ours or a native transformers class), so every export
    path shares this one rule.
    """
    import json
    from pathlib import Path

    from transformers import GenerationConfig

    folder = Path(out_dir)
    ids = special_token_ids(tokenizer) if tokenizer is not None else {}
    config_path = folder / "config.json"
    if ids and config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config_path.write_text(json.dumps(_merge_ids(str(config_path), config, ids), indent=2) + "\n", encoding="utf-8")
    if ids:
        try:
            gen = GenerationConfig.from_pretrained(folder).to_diff_dict()
        except OSError:  # no generation_config.json yet (e.g. a config with every default)
            gen = {}
        merged = _merge_ids(str(folder / "generation_config.json"), gen, ids)
        # written on purpose now, not derived from config.json: transformers must not re-derive it
        for key in ("transformers_version", "_from_model_config"):
            merged.pop(key, None)
        GenerationConfig(**merged).save_pretrained(folder)
    tok_path = folder / "tokenizer_config.json"
    if max_length is not None and tok_path.is_file():
        if int(max_length) < 1:
            raise ValueError(f"max_length={max_length}: the trained context length must be positive")
        tok_config = json.loads(tok_path.read_text(encoding="utf-8"))
        tok_config["model_max_length"] = int(max_length)
        tok_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
