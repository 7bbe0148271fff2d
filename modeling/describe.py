"""Describe a preset: architecture, parameter breakdown and training FLOPs per token.

    python -m modeling.describe qwen3-1.8b [--seq-len 2048] [--set num_hidden_layers=30] [--json out.json]
    python -m modeling.describe tiny-llama --forward      # also build it and run one forward pass

Pure arithmetic from the config: the big presets are described without allocating their weights.
"""

from __future__ import annotations

import argparse
import json
import sys

from .accounting import FLOPS_DEFINITION, count_parameters, flops_per_token
from .configuration import DecoderConfig
from .presets import PRESETS

ARCH_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "mlp_type", "norm_type", "norm_eps", "position_embedding", "rope_theta",
    "max_position_embeddings", "qk_norm", "attention_bias", "mlp_bias", "tie_word_embeddings",
)


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings -> typed values (JSON literals where they parse, else strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def describe(config: DecoderConfig, seq_len: int) -> dict:
    params = count_parameters(config)
    return {
        "preset": getattr(config, "preset_name", None),
        "architecture": {f: getattr(config, f) for f in ARCH_FIELDS},
        "parameters": params,
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(config, seq_len),
        "flops_definition": FLOPS_DEFINITION,
    }


def format_table(info: dict) -> str:
    lines = [f"preset: {info['preset']}", "", "architecture:"]
    lines += [f"  {k:<26} {v}" for k, v in info["architecture"].items()]
    p = info["parameters"]
    lines += ["", f"  {'parameters':<26} {'count':>16} {'share':>8}"]
    for key, value in p.items():
        share = f"{100 * value / p['total']:7.2f}%" if key != "total" else ""
        lines.append(f"  {key:<26} {value:>16,} {share:>8}")
    lines += [
        "",
        f"  training FLOPs/token at seq_len {info['seq_len']}: {info['flops_per_token']:.4e}",
        f"  ({info['flops_definition']})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modeling.describe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help=f"one of: {', '.join(sorted(PRESETS))}")
    ap.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default: max_position_embeddings)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    ap.add_argument("--json", metavar="FILE", help="also write the description as JSON ('-' for stdout only)")
    ap.add_argument("--forward", action="store_true", help="build the model and run one forward pass (small presets)")
    args = ap.parse_args(argv)
    try:
        config = DecoderConfig.from_preset(args.preset, **parse_overrides(args.set))
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    info = describe(config, args.seq_len or config.max_position_embeddings)
    if args.json == "-":
        print(json.dumps(info, indent=2))
        return 0
    print(format_table(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    if args.forward:
        import torch

        from .modeling_decoder import DecoderForCausalLM

        torch.manual_seed(0)
        model = DecoderForCausalLM(config).eval()
        ids = torch.randint(0, config.vocab_size, (2, 32))
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        print(f"\nforward pass: attention backend {model.config._attn_implementation} ({model.attn_backend_reason})")
        print(f"  logits {tuple(out.logits.shape)}, loss {out.loss.item():.4f} (ln(vocab) = "
              f"{torch.log(torch.tensor(float(config.vocab_size))).item():.4f} for a uniform guess)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
