"""Decoder-only LLMs (GPT-2, LLaMA 2/3, Qwen3) as one configurable HF PreTrainedModel."""

from transformers import AutoConfig, AutoModelForCausalLM

from .accounting import FLOPS_DEFINITION, count_parameters, flops_per_token, mfu
from .attention import ATTENTION_FUNCTIONS, resolve_attn_implementation
from .configuration import DecoderConfig
from .hf_export import NotExportableError, export_hf, from_hf, hf_family, to_hf
from .modeling_decoder import DecoderForCausalLM, DecoderModel
from .presets import PRESETS

# Our directories (model_type "llmstack_decoder") load with the Auto classes once this package is imported.
AutoConfig.register(DecoderConfig.model_type, DecoderConfig, exist_ok=True)
AutoModelForCausalLM.register(DecoderConfig, DecoderForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTION_FUNCTIONS", "DecoderConfig", "DecoderForCausalLM", "DecoderModel", "FLOPS_DEFINITION",
    "NotExportableError", "PRESETS", "count_parameters", "export_hf", "flops_per_token", "from_hf",
    "hf_family", "mfu", "resolve_attn_implementation", "to_hf",
]
