"""Plan a pre-training run before renting GPUs: scaling laws, memory, batch size, wall-clock.

    python -m training.planning chinchilla --preset qwen3-1.8b --tokens 36B --tokens-per-iter 720896
    python -m training.planning optimal --flops 1.36e21 [--min-tokens-per-param 20]
    python -m training.planning memory --preset qwen3-1.8b --micro-batch 22 --seq-len 2048 --strategy zero1 --world-size 8
    python -m training.planning batch --gpu B200 --num-gpus 8 --preset qwen3-1.8b --seq-len 2048 --global-batch-sequences 352
    python -m training.planning time --preset qwen3-1.8b --tokens 36B --setup 2xA6000 --setup 8xB200 --mfu 0.4

Every subcommand prints a table and takes `--json FILE` ('-': JSON on stdout only). Each has a
function returning a dict (`chinchilla`, `optimal`, `estimate_memory`, `plan_batch`,
`estimate_time`); the CLI only formats.

Conventions (stated once, used everywhere below):
- N in the Chinchilla formulas is the TOTAL parameter count (embeddings and LM head included), as
  Hoffmann et al. 2022 count it (Kaplan et al. 2020 used non-embedding parameters; Pearce & Song
  2024, "Reconciling Kaplan and Chinchilla scaling laws", trace most of the two papers' disagreement
  to that difference). The non-embedding count is shown next to it for reference.
- Predicted loss is Hoffmann et al.'s approach-3 fit L(N, D) = E + A/N^alpha + B/D^beta with
  E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28 (their section 3.3). It is a fit to MassiveText
  with their tokenizer: compare architectures and budgets with it, do not expect your loss values.
- Compute: the closed form uses C = 6*N*D (Kaplan's approximation, as Hoffmann's closed form does);
  the architecture grid uses this repo's FLOPs per token (modeling.flops_per_token: 6*N_matmul +
  12*L*H*S, PaLM appendix B), so D = C / flops_per_token(config, seq_len).
- Memory is in GiB (2^30 bytes); the vendor's "80 GB" is taken as 80 GiB (see training/hardware.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Sequence

from modeling import PRESETS, DecoderConfig, count_parameters, flops_per_token

from .analysis import fmt, format_table, summarize, write_json
from .hardware import GPU_MEMORY_GB, canonical_gpu_name, known_gpus, parse_gpu_setup, peak_flops

GIB = 2**30

# ================================================================================================
# Chinchilla
# ================================================================================================
# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3 (section 3.3).
CHINCHILLA_FIT = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TOKENS_PER_PARAM = 20.0  # the "20 tokens per parameter" rule read off Hoffmann et al.'s table 3
COMPLIANT_BAND = 0.25  # D/N within +-25% of 20 counts as compute-optimal ("compliant")
N_DEFINITION = ("total parameters incl. embeddings and LM head (Hoffmann et al. 2022 count N this way; "
                "Kaplan et al. 2020 used non-embedding N)")


def chinchilla_loss(n_params: float, n_tokens: float) -> float:
    """Predicted final loss L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3)."""
    if n_params <= 0 or n_tokens <= 0:
        raise ValueError(f"chinchilla_loss needs positive N and D, got N={n_params}, D={n_tokens}")
    f = CHINCHILLA_FIT
    return f["E"] + f["A"] / n_params ** f["alpha"] + f["B"] / n_tokens ** f["beta"]


def chinchilla_status(tokens_per_param: float) -> str:
    low, high = TOKENS_PER_PARAM * (1 - COMPLIANT_BAND), TOKENS_PER_PARAM * (1 + COMPLIANT_BAND)
    if tokens_per_param < low:
        return "under-trained"
    if tokens_per_param > high:
        return "over-trained"
    return "compliant"


def chinchilla(
    n_params: float | None = None,
    n_tokens: float | None = None,
    *,
    preset: str | None = None,
    seq_len: int = 2048,
    tokens_per_iter: int | None = None,
) -> dict:
    """The D = 20N target, the run's D/N and status, iterations, and predicted losses."""
    out: dict[str, Any] = {"n_params_definition": N_DEFINITION, "seq_len": seq_len}
    fpt = None
    if preset is not None:
        config = DecoderConfig.from_preset(preset)
        counts = count_parameters(config)
        n_params = counts["total"]
        fpt = flops_per_token(config, seq_len)
        out.update(preset=preset, non_embedding_params=counts["non_embedding"], flops_per_token=fpt)
    if n_params is None:
        raise ValueError("give --preset NAME or --params N")
    if n_params <= 0 or (n_tokens is not None and n_tokens <= 0):
        raise ValueError(f"parameters and tokens must be positive (got N={n_params}, D={n_tokens})")
    target = TOKENS_PER_PARAM * n_params

    def iters(tokens: float) -> int | None:
        return math.ceil(tokens / tokens_per_iter) if tokens_per_iter else None

    out.update(
        n_params=n_params, tokens_per_iter=tokens_per_iter,
        target_tokens=target, target_iters=iters(target), target_loss=chinchilla_loss(n_params, target),
        target_flops_6nd=6 * n_params * target, target_flops=fpt * target if fpt else None,
    )
    if n_tokens is not None:
        ratio = n_tokens / n_params
        out.update(
            tokens=n_tokens, tokens_per_param=ratio, status=chinchilla_status(ratio), iters=iters(n_tokens),
            loss=chinchilla_loss(n_params, n_tokens), flops_6nd=6 * n_params * n_tokens,
            flops=fpt * n_tokens if fpt else None,
        )
    return out


# ================================================================================================
# Compute-optimal N and D for a FLOPs budget
# ================================================================================================
def closed_form_optimum(flops: float) -> dict:
    """argmin L(N, D) subject to 6*N*D = C (Hoffmann et al. 2022, eq. 4 with the approach-3 fit):
    N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, a = beta/(alpha+beta), b = alpha/(alpha+beta),
    G = (alpha*A / (beta*B))^(1/(alpha+beta))."""
    if flops <= 0:
        raise ValueError(f"the FLOPs budget must be positive, got {flops}")
    f = CHINCHILLA_FIT
    s = f["alpha"] + f["beta"]
    g = (f["alpha"] * f["A"] / (f["beta"] * f["B"])) ** (1 / s)
    n = g * (flops / 6) ** (f["beta"] / s)
    d = (flops / 6) ** (f["alpha"] / s) / g
    return {"flops": flops, "G": g, "a": f["beta"] / s, "b": f["alpha"] / s, "n_params": n, "tokens": d,
            "tokens_per_param": d / n, "loss": chinchilla_loss(n, d), "convention": "C = 6*N*D"}


# A family is a preset's field values with hidden size and depth changed: heads = hidden / 128,
# the preset's MLP ratio (intermediate / hidden) and query:KV head ratio, its vocabulary.
FAMILIES: dict[str, str] = {"gpt2": "gpt2-124m", "llama3": "llama3-1.5b", "qwen3": "qwen3-1.8b"}
GRID_HEAD_DIM = 128
GRID_HIDDEN = tuple(range(256, 8192 + 1, 256))  # multiples of 256: an even head count for 2:1 GQA
GRID_LAYERS = tuple(range(2, 129))
# Kaplan et al. 2020 (fig. 5): at fixed N the loss changes by only a few percent over a wide range of
# aspect ratios hidden/layers; we keep the grid inside 20..200 (the seed architectures: 64-114).
GRID_ASPECT = (20.0, 200.0)
SEED_RESULTS_1_36E21 = [  # what the seed project's search reported for C = 1.36e21 (for comparison)
    ("seed: unconstrained", 1.545e9, 101.9e9),
    ("seed: D~20N-ish", 2.223e9, 61.5e9),
]


def family_config(family: str, hidden: int, layers: int, seq_len: int = 2048) -> DecoderConfig:
    """A `family`-shaped DecoderConfig of the given width and depth."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    base = {k: v for k, v in PRESETS[FAMILIES[family]].items() if k != "source"}
    heads = hidden // GRID_HEAD_DIM
    kv_ratio = base["num_attention_heads"] // (base.get("num_key_value_heads") or base["num_attention_heads"])
    mlp_ratio = base["intermediate_size"] / base["hidden_size"]
    base.update(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads // kv_ratio if heads % kv_ratio == 0 else heads, head_dim=GRID_HEAD_DIM,
        intermediate_size=int(round(mlp_ratio * hidden / 128)) * 128,
        max_position_embeddings=max(seq_len, base["max_position_embeddings"]),
    )
    return DecoderConfig(**base)


def architecture_grid(seq_len: int = 2048, families: Sequence[str] | None = None) -> list[dict]:
    """Every grid architecture with its parameter count and FLOPs per token (no budget yet)."""
    rows = []
    for family in families or FAMILIES:
        for hidden in GRID_HIDDEN:
            config = family_config(family, hidden, 2, seq_len)
            for layers in GRID_LAYERS:
                if not GRID_ASPECT[0] <= hidden / layers <= GRID_ASPECT[1]:
                    continue
                # Depth enters the accounting only through num_hidden_layers: reuse the validated
                # config rather than re-validating ~10k of them.
                config.num_hidden_layers = layers
                counts = count_parameters(config)
                rows.append({
                    "family": family, "layers": layers, "hidden": hidden,
                    "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                    "intermediate": config.intermediate_size, "vocab": config.vocab_size,
                    "n_params": counts["total"], "non_embedding_params": counts["non_embedding"],
                    "flops_per_token": flops_per_token(config, seq_len),
                })
    return rows


def optimal(
    flops: float,
    *,
    seq_len: int = 2048,
    families: Sequence[str] | None = None,
    min_tokens_per_param: float | None = None,
    max_tokens_per_param: float | None = None,
    floor_tokens_per_param: float = 1.0,
    top: int = 10,
) -> dict:
    """Closed-form optimum, and the grid architectures ranked by predicted loss at budget `flops`:
    unconstrained, and within a tokens-per-parameter band (default: the 20N rule +-25%).

    An architecture is feasible when the budget buys it at least `floor_tokens_per_param` tokens
    per parameter (default 1): below that the fit is extrapolated far outside Hoffmann et al.'s runs."""
    closed = closed_form_optimum(flops)
    grid = architecture_grid(seq_len, families)
    for row in grid:
        row["tokens"] = flops / row["flops_per_token"]
        row["tokens_per_param"] = row["tokens"] / row["n_params"]
        row["loss"] = chinchilla_loss(row["n_params"], row["tokens"])
        row["flops_6nd_over_c"] = 6 * row["n_params"] * row["tokens"] / flops
    feasible = sorted((r for r in grid if r["tokens_per_param"] >= floor_tokens_per_param), key=lambda r: r["loss"])
    if not feasible:
        smallest = min(grid, key=lambda r: r["flops_per_token"] * r["n_params"])
        need = smallest["flops_per_token"] * smallest["n_params"] * floor_tokens_per_param
        raise ValueError(
            f"FLOPs budget {flops:.3g} is too small for any architecture in the grid: the cheapest "
            f"({smallest['family']}, {smallest['layers']} layers x {smallest['hidden']}, "
            f"{smallest['n_params'] / 1e6:.1f}M params) needs {need:.3g} FLOPs to see "
            f"{floor_tokens_per_param:g} token(s) per parameter. Raise --flops to at least {need:.3g}, "
            "or lower --floor-tokens-per-param."
        )
    if min_tokens_per_param is None and max_tokens_per_param is None:
        band = (TOKENS_PER_PARAM * (1 - COMPLIANT_BAND), TOKENS_PER_PARAM * (1 + COMPLIANT_BAND))
        band_name = f"D/N in [{band[0]:g}, {band[1]:g}] (the 20N rule +-{100 * COMPLIANT_BAND:.0f}%)"
    else:
        band = (min_tokens_per_param or 0.0, max_tokens_per_param or math.inf)
        band_name = f"D/N in [{band[0]:g}, {band[1]:g}]"
    constrained = [r for r in feasible if band[0] <= r["tokens_per_param"] <= band[1]]
    per_family = {}
    for r in feasible:
        per_family.setdefault(r["family"], r)
    best = feasible[0]
    notes = [
        "the fit sees only N and D: shape enters through FLOPs/token alone. Input embeddings count in N but "
        "cost no FLOPs, and attention's 12*L*h*S per token shrinks relative to the weights' ~72*L*h^2 as h "
        "grows, so large-vocabulary (qwen3) and wide-shallow shapes rank first; losses that differ in the "
        "3rd decimal are within the fit's noise.",
        f"closed form vs grid: the closed form prices every parameter at 6 FLOPs/token; the grid's best has "
        f"{best['flops_per_token'] / (6 * best['n_params']):.2f}x that (embeddings free, attention and LM head "
        "counted), hence a different N and D.",
    ]
    if best["n_params"] >= 0.9 * max(r["n_params"] for r in grid):
        notes.append("the unconstrained optimum is at the grid's largest models: the budget wants bigger ones")
    if not constrained:
        notes.append(f"no grid architecture satisfies {band_name} at this budget")
    result = {
        "flops": flops, "seq_len": seq_len, "n_params_definition": N_DEFINITION,
        "flops_convention": "grid: D = C / modeling.flops_per_token(config, seq_len); closed form: C = 6*N*D",
        "closed_form": closed,
        "grid_size": len(grid), "feasible": len(feasible),
        "unconstrained": feasible[:top],
        "constraint": {"min_tokens_per_param": band[0], "max_tokens_per_param": band[1], "description": band_name},
        "constrained": constrained[:top],
        "best_per_family": per_family,
        "notes": notes,
    }
    if abs(flops / 1.36e21 - 1) < 0.01:
        ratios = [6 * n * d / flops for _, n, d in SEED_RESULTS_1_36E21]
        per_param = [flops / (n * d) for _, n, d in SEED_RESULTS_1_36E21]
        notes.append(
            "the seed's pairs are neither at C = 6ND (6ND/C = " + ", ".join(f"{x:.2f}" for x in ratios) + ") nor at "
            "one FLOPs-per-parameter-token figure (C/(ND) = " + ", ".join(f"{x:.2f}" for x in per_param) + "), so "
            "they were counted differently; scored with this fit both predict a higher loss than the grid's best"
        )
        result["seed_comparison"] = [
            {"name": name, "n_params": n, "tokens": d, "tokens_per_param": d / n, "loss": chinchilla_loss(n, d),
             "flops_6nd": 6 * n * d}
            for name, n, d in SEED_RESULTS_1_36E21
        ]
    return result


# ================================================================================================
# Memory per GPU
# ================================================================================================
STRATEGIES = ("ddp", "zero0", "zero1", "zero2", "zero3", "fsdp")
STRATEGY_HELP = {
    "ddp": "accelerate/torch DDP, no sharding (bf16: fp32 weights under torch.autocast)",
    "zero0": "DeepSpeed, no partitioning (ds_configs/zero0.json)",
    "zero1": "DeepSpeed ZeRO-1: optimizer states (+ fp32 master) partitioned (ds_configs/zero1.json)",
    "zero2": "DeepSpeed ZeRO-2: + gradients partitioned",
    "zero3": "DeepSpeed ZeRO-3: + parameters partitioned",
    "fsdp": "PyTorch FSDP2 full shard, bf16 compute over fp32 sharded parameters",
}
ATTENTION_BACKENDS = {"flash": "flash", "flash_attention_2": "flash", "sdpa": "sdpa", "eager": "eager"}
CUDA_CONTEXT_GIB = 1.0  # CUDA context + loaded kernels (roughly 0.5 GiB per torch process) + cuBLAS/NCCL workspaces
FRAGMENTATION = 0.05  # caching-allocator slack: reserved exceeds allocated by a few % in steady training
# DeepSpeed knobs as this repo's ds_configs set them (elements, not bytes).
DS_REDUCE_BUCKET = 5e8  # reduce_bucket_size in zero1/2/3.json
DS_MAX_LIVE_PARAMETERS = 1e9  # stage3_max_live_parameters in zero3.json
LOSS_CHUNK_SIZE = 1024  # tokens per chunk of modeling.losses.linear_cross_entropy (DecoderForCausalLM.loss_chunk_size)


def _norm_bytes(config: DecoderConfig, width: int, e: int, r: int) -> int:
    """Bytes autograd keeps per token for one norm whose output feeds a matmul (measured on CPU, see
    tests/training/test_planning.py). Our RMSNorm runs in fp32 unfused: it keeps an fp32 view of its
    input (4), the normalised tensor in the input dtype (r, for the gain's gradient), the gain
    product or its autocast bf16 copy that the next matmul saves (e), and 1/rms (4 per token).
    A fused LayerNorm keeps its input (r) and the output the matmul saves (e), + mean/rstd (fp32)."""
    if config.norm_type == "rmsnorm":
        return (4 + r + e) * width + 4
    return (r + e) * width + 8


def activation_memory(
    config: DecoderConfig,
    seq_len: int,
    micro_batch: int,
    *,
    compute_bytes: int = 2,
    residual_bytes: int = 2,
    attention: str = "flash",
    checkpointing: bool = False,
    loss: str = "plain",
    loss_chunk_size: int = LOSS_CHUNK_SIZE,
) -> dict:
    """Activation bytes of one micro-batch: the per-layer, per-token formula and the totals.

    Start from Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", sec. 4.1): per layer s*b*h*(34 + 5*a*s/h) bytes for a GPT block in 16-bit with dropout,
    i.e. 11sbh + 5as^2b (attention) + 19sbh (MLP) + 4sbh (norms). Adapted to what our blocks keep
    (e = compute bytes, r = residual-stream bytes, q = heads*head_dim, kv = kv_heads*head_dim,
    i = MLP width, a = heads, s = seq_len; per token per layer):
      norms        2 * norm (see _norm_bytes; LayerNorm with r = e = 2: 4h, Korthikanti's 2sbh + 2sbh)
      flash/sdpa   e(q + 2kv) [q, k, v]  + e(q + kv) [q, k after RoPE]  + e*q [output]  + 4a [log-sum-exp]
                   FlashAttention never materialises the s x s scores: no s^2 term (Dao 2022).
      eager        3e*q [q, k, v copied at query width after GQA expansion] + e*q [output]
                   + (4 + e)*a*s [fp32 softmax and its e-byte copy] (+ an s x s bool mask per layer)
      qk-norm      (4 + e)(q + kv) + 4(a + kv_heads)  (Qwen3; fp32 copy + normalised + 1/rms per head;
                   in fp32 the "copy" is the projection output itself: e(q + kv) [+ e(q + 2kv) under eager])
      MLP          SwiGLU 4i*e [gate|up, silu(gate), product]; plain 2i*e [pre- and post-activation]
      dropout p>0  2h + (eager: a*s) one-byte masks (CUDA's fused dropout keeps bool masks; the CPU
                   fallback keeps e-byte ones; FlashAttention regenerates its dropout mask)
    With r = e = 2, eager attention, a 4h GELU MLP, LayerNorm and dropout this is 34h + 7as bytes: Korthikanti's
    34sbh exactly, and 7as instead of 5as because our softmax is computed in fp32.
    Once per token: final norm, token ids (8), and the loss head, which depends on `loss`:
      plain    model(...).loss as training/trainer.py calls it: bf16 logits, an fp32 copy, cross_entropy.
               Keeps the fp32 log-softmax (4V) and the targets (8); its backward working set, fp32
               gradients of the log-probs and of the logits (8V per token), coexists with every
               layer's saved tensors at the start of backward.
      chunked  model(..., return_logits=False): modeling.losses.linear_cross_entropy computes loss and
               gradients chunk by chunk in the forward and keeps only d/dhidden (e*h, in place of the
               head matmul's saved input) and d/dweight (fp32, 4*V*h per micro-batch); its transient is
               one chunk of logits and fp32 log-probs, chunk*V*(e + 4), + an e-byte V*h matmul result
               (+ the autocast bf16 copy of the head weight under DDP).
    Peak: the saved tensors plus the larger of the loss's working set and one layer's activation
    gradients. With checkpointing only each block's input (r*h) is kept; one block is recomputed at a
    time (its activations + their gradients: 2 layers' worth).

    The saved-tensor part is checked byte for byte against what autograd saves on CPU, for every
    family, precision and backend (tests/training/test_planning.py); the backward working set is a model."""
    attention = ATTENTION_BACKENDS.get(attention, attention)
    if attention not in ("flash", "sdpa", "eager"):
        raise ValueError(f"unknown attention backend {attention!r}; choose flash, sdpa or eager")
    e, r = compute_bytes, residual_bytes
    h, L, V, s = config.hidden_size, config.num_hidden_layers, config.vocab_size, seq_len
    a, hd = config.num_attention_heads, config.head_dim
    q, kv, i = a * hd, config.num_key_value_heads * hd, config.intermediate_size
    rope = config.position_embedding == "rope"

    terms: dict[str, int] = {"norms (2 per block)": 2 * _norm_bytes(config, h, e, r)}
    if attention == "eager":
        terms["attention q, k, v (query width)"] = 3 * e * q
        terms["attention output"] = e * q
        terms["softmax probabilities (s-proportional)"] = (4 + (e if e != 4 else 0)) * a * s
    else:
        terms["attention q, k, v"] = e * (q + 2 * kv)
        if rope:
            terms["rotated q, k"] = e * (q + kv)
        terms["attention output"] = e * q
        terms["softmax log-sum-exp"] = 4 * a
    if config.qk_norm:
        # fp32 view of q, k (a new tensor when e = 2; when e = 4 it is the projection output itself,
        # which then stays alive even under eager attention) + the normalised q, k + 1/rms per head.
        terms["qk-norm"] = (4 if e != 4 else 0) * (q + kv) + e * (q + kv) + 4 * (a + config.num_key_value_heads)
        if e == 4 and attention == "eager":
            terms["q, k, v projection output (kept by qk-norm)"] = e * (q + 2 * kv)
    terms["MLP"] = (4 if config.is_gated_mlp else 2) * i * e
    if config.dropout > 0:
        terms["dropout masks"] = 2 * h + (a * s if attention == "eager" else 0)
    layer = sum(terms.values())

    if loss not in ("plain", "chunked"):
        raise ValueError(f"unknown loss path {loss!r}; choose plain (model(...).loss) or chunked (return_logits=False)")
    head = {"final norm": _norm_bytes(config, h, e, r), "token ids": 8}
    if loss == "plain":
        head["log-softmax (fp32) + targets"] = 4 * V + 8
    if config.dropout > 0:
        head["embedding dropout mask"] = h
    head_bytes = sum(head.values())
    per_batch = {}  # bytes per micro-batch, independent of its size in tokens
    if rope:
        per_batch["RoPE cos/sin tables"] = 2 * s * hd * r
    if config.position_embedding == "learned":
        per_batch["position ids"] = 8 * s
    mask = s * s if attention == "eager" else 0  # the causal bool mask each eager layer builds

    tokens = micro_batch * seq_len
    if loss == "plain":
        loss_working = tokens * 8 * V
    else:
        per_batch["chunked loss: fp32 d/d(head weight)"] = 4 * V * h
        loss_working = min(loss_chunk_size, tokens) * V * (e + 4) + (e * V * h if e != 4 else 0) \
            + (e * V * h if r != e else 0)  # autocast: bf16 copy of the fp32 head weight
    if checkpointing:
        saved = tokens * (L * r * h + head_bytes) + sum(per_batch.values())
        working = max(loss_working, 2 * (tokens * layer + mask))
        kept = f"block inputs only, {r}*h per layer per token; the recomputed block is in the working set"
    else:
        saved = tokens * (L * layer + head_bytes) + sum(per_batch.values()) + L * mask
        working = max(loss_working, tokens * layer + mask)
        kept = "every layer's saved tensors"
    return {
        "attention": attention, "compute_bytes": e, "residual_bytes": r, "checkpointing": checkpointing, "kept": kept,
        "loss": loss, "loss_working_bytes": loss_working,
        "per_layer_per_token_bytes": terms, "layer_bytes_per_token": layer,
        "layer_bytes_per_token_over_h": layer / h,
        "once_per_token_bytes": head, "per_micro_batch_bytes": per_batch, "eager_mask_bytes_per_layer": mask,
        "saved_bytes": saved, "backward_working_bytes": working, "peak_bytes": saved + working,
    }


def _precision_bytes(strategy: str, precision: str) -> tuple[int, int]:
    """(compute bytes e, residual-stream bytes r) of the activations."""
    if precision == "fp32":
        return 4, 4
    # DeepSpeed casts the module to bf16 and FSDP2 gathers bf16 parameters: the whole forward runs in
    # bf16. DDP keeps fp32 weights under torch.autocast: matmuls in bf16, but the residual stream,
    # embeddings and norms stay fp32.
    return (2, 4) if strategy == "ddp" else (2, 2)


def _model_state_terms(
    strategy: str, precision: str, n: int, world: int, layer_params: int, root_params: int, matmul_params: int,
    grad_accum_dtype: str, bucket: float, max_live: float,
) -> list[tuple[str, str, str, float]]:
    """(component, what, formula, bytes) for weights, gradients, optimizer states and the step-time
    transient, per GPU, for P = n parameters on `world` data-parallel ranks.

    bf16 under DeepSpeed (what `runtime/bf16_optimizer.py`, `fp16/fused_optimizer.py` and
    `zero/stage_1_and_2.py` allocate in deepspeed 0.19): bf16 module parameters (2P) and gradients,
    fp32 master weights (4P) and Adam m, v (8P), partitioned per ZeRO stage (Rajbhandari et al.
    2020: stage 1 shards the 12P of optimizer state incl. master weights, stage 2 adds gradients,
    stage 3 parameters). Our zero1.json sets grad_accum_dtype fp32, which selects BF16_Optimizer: it
    also keeps a FULL-size fp32 gradient accumulation buffer (4P, not partitioned).
    bf16 under DDP + autocast: fp32 parameters (4P, also the master), fp32 gradients (4P), Adam (8P),
    bf16 copies autocast makes of the matmul weights (2M, M = P minus embeddings and norms, plus the
    LM head even when tied, on the plain loss path) which autograd keeps until backward, and DDP's reducer
    buckets, a second gradient copy when W > 1 (gradient_as_bucket_view=False, the default).
    FSDP2 full shard: fp32 sharded parameters, gradients and Adam (16P/W) + bf16 unsharded
    parameters of the root (embeddings, head) and of two blocks (current + prefetched)."""
    P, W = float(n), float(world)
    t: list[tuple[str, str, str, float]] = []
    if precision == "fp32":  # no master copy: the fp32 parameters are what the optimizer updates
        if strategy in ("zero3", "fsdp"):
            t.append(("weights", "fp32 parameter shard", "4P/W", 4 * P / W))
        else:
            t.append(("weights", "fp32 parameters", "4P", 4 * P))
        if strategy in ("ddp", "zero0", "zero1"):
            t.append(("gradients", "fp32 gradients", "4P", 4 * P))
        else:
            t.append(("gradients", "fp32 gradient shard", "4P/W", 4 * P / W))
        if strategy == "ddp" and world > 1:
            t.append(("gradients", "DDP reducer buckets (a second gradient copy)", "4P", 4 * P))
        if strategy in ("zero1", "zero2"):
            t.append(("gradients", "ZeRO ipg buckets (double-buffered, overlap_comm)", "2*bucket*4", 2 * bucket * 4))
        if strategy == "zero3":
            t.append(("weights", "gathered parameters (stage3_max_live_parameters)", "min(P, live)*4", min(P, max_live) * 4))
            t.append(("gradients", "ZeRO-3 reduce bucket", "bucket*4", bucket * 4))
        if strategy == "fsdp":
            t.append(("weights", "unsharded root + 2 blocks", "4*(root + 2*layer)", 4 * (root_params + 2 * layer_params)))
            t.append(("gradients", "unsharded gradients of 2 blocks before reduce-scatter", "4*2*layer", 8 * layer_params))
        if strategy in ("ddp", "zero0"):
            t.append(("optimizer", "AdamW exp_avg + exp_avg_sq (fp32)", "8P", 8 * P))
        else:
            t.append(("optimizer", "AdamW exp_avg + exp_avg_sq (fp32), sharded", "8P/W", 8 * P / W))
        return t

    # --- 16-bit mixed precision --------------------------------------------------------------
    if strategy == "ddp":
        t += [("weights", "fp32 parameters (the master copy)", "4P", 4 * P),
              ("weights", "bf16 autocast copies of matmul weights, kept for backward", "2M", 2.0 * matmul_params),
              ("gradients", "fp32 gradients", "4P", 4 * P)]
        if world > 1:
            t.append(("gradients", "DDP reducer buckets (a second gradient copy)", "4P", 4 * P))
        t.append(("optimizer", "AdamW exp_avg + exp_avg_sq (fp32)", "8P", 8 * P))
        return t
    if strategy == "fsdp":
        return [("weights", "fp32 parameter shard", "4P/W", 4 * P / W),
                ("weights", "bf16 unsharded root + 2 blocks", "2*(root + 2*layer)", 2 * (root_params + 2 * layer_params)),
                ("gradients", "fp32 gradient shard", "4P/W", 4 * P / W),
                ("gradients", "bf16 unsharded gradients of 2 blocks before reduce-scatter", "2*2*layer", 4 * layer_params),
                ("optimizer", "AdamW exp_avg + exp_avg_sq (fp32), sharded", "8P/W", 8 * P / W)]
    # DeepSpeed
    if strategy == "zero0":
        # bf16 without ZeRO = DeepSpeed's FP16_Optimizer path ("DDP_BFLOAT16"): fp32 master of all params.
        return [("weights", "bf16 parameters", "2P", 2 * P), ("weights", "fp32 master weights", "4P", 4 * P),
                ("gradients", "bf16 gradients", "2P", 2 * P),
                ("optimizer", "AdamW exp_avg + exp_avg_sq (fp32)", "8P", 8 * P),
                ("step", "fp32 copy of all gradients made at the step", "4P", 4 * P)]
    params = ("weights", "bf16 parameters", "2P", 2 * P) if strategy != "zero3" else \
        ("weights", "bf16 parameter shard", "2P/W", 2 * P / W)
    t += [params, ("weights", "fp32 master weight shard", "4P/W", 4 * P / W)]
    if strategy == "zero3":
        t.append(("weights", "gathered bf16 parameters (stage3_max_live_parameters)", "min(P, live)*2", min(P, max_live) * 2))
    if strategy == "zero1" and grad_accum_dtype == "fp32":
        t += [("gradients", "bf16 gradients", "2P", 2 * P),
              ("gradients", "fp32 accumulation buffer (BF16_Optimizer, full size)", "4P", 4 * P)]
    elif strategy == "zero1":
        t += [("gradients", "bf16 gradients", "2P", 2 * P),
              ("gradients", "ZeRO ipg buckets (double-buffered, overlap_comm)", "2*bucket*2", 2 * bucket * 2)]
    elif strategy == "zero2":
        t += [("gradients", "bf16 gradient shard", "2P/W", 2 * P / W),
              ("gradients", "ZeRO ipg buckets (double-buffered, overlap_comm)", "2*bucket*2", 2 * bucket * 2)]
    else:
        t += [("gradients", "bf16 gradient shard", "2P/W", 2 * P / W),
              ("gradients", "ZeRO-3 reduce bucket", "bucket*2", bucket * 2)]
    t.append(("optimizer", "AdamW exp_avg + exp_avg_sq (fp32), sharded", "8P/W", 8 * P / W))
    if not (strategy == "zero1" and grad_accum_dtype == "fp32"):
        t.append(("step", "fp32 copy of the gradient shard made at the step", "4P/W", 4 * P / W))
    return t


def estimate_memory(
    config: DecoderConfig | str,
    *,
    micro_batch: int,
    seq_len: int,
    precision: str = "bf16",
    strategy: str = "zero1",
    world_size: int = 1,
    attention: str = "flash",
    activation_checkpointing: bool = False,
    loss: str = "plain",
    grad_accum_dtype: str | None = None,
    reduce_bucket: float = DS_REDUCE_BUCKET,
    max_live_parameters: float = DS_MAX_LIVE_PARAMETERS,
    cuda_context_gib: float = CUDA_CONTEXT_GIB,
    fragmentation: float = FRAGMENTATION,
) -> dict:
    """Peak memory per GPU, in GiB, broken into weights, gradients, optimizer, activations, overhead.

    total = weights + gradients + optimizer + max(activations, step transient) + overhead, where the
    step transient (fp32 gradient copies DeepSpeed makes inside optimizer.step) never coexists with
    the activations, and overhead = CUDA context + fragmentation * (everything else)."""
    if isinstance(config, str):
        config = DecoderConfig.from_preset(config)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    precision = {"bf16": "bf16", "fp16": "bf16", "fp32": "fp32"}.get(precision, precision)
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose bf16 (mixed, also covers fp16) or fp32")
    if micro_batch < 1 or seq_len < 1 or world_size < 1:
        raise ValueError(f"micro_batch, seq_len and world_size must be >= 1 (got {micro_batch}, {seq_len}, {world_size})")
    if grad_accum_dtype is None:
        grad_accum_dtype = "fp32" if strategy == "zero1" else precision  # as ds_configs/zero1.json sets it
    counts = count_parameters(config)
    n = counts["total"]
    root = counts["token_embedding"] + counts["position_embedding"] + counts["lm_head"] + counts["final_norm"]
    # matmul weights autocast copies to bf16 and autograd keeps: the blocks', and the LM head's on the
    # plain loss path (the chunked loss casts the head once per forward and keeps no copy)
    matmul = config.num_hidden_layers * (counts["attention_per_layer"] + counts["mlp_per_layer"]) \
        + (config.vocab_size * config.hidden_size if loss == "plain" else 0)
    state = _model_state_terms(strategy, precision, n, world_size, counts["per_layer"], root, matmul,
                               grad_accum_dtype, reduce_bucket, max_live_parameters)
    e, r = _precision_bytes(strategy, precision)
    act = activation_memory(config, seq_len, micro_batch, compute_bytes=e, residual_bytes=r,
                            attention=attention, checkpointing=activation_checkpointing, loss=loss)
    comp = {k: sum(b for c, _, _, b in state if c == k) for k in ("weights", "gradients", "optimizer", "step")}
    static = comp["weights"] + comp["gradients"] + comp["optimizer"]
    dynamic = max(act["peak_bytes"], comp["step"])
    frag = fragmentation * (static + dynamic)
    overhead = cuda_context_gib * GIB + frag
    total = static + dynamic + overhead
    terms = [{"component": c, "what": w, "formula": f, "gib": b / GIB} for c, w, f, b in state]
    terms += [
        {"component": "activations", "what": f"saved tensors ({act['kept']})", "formula": "see activation_memory",
         "gib": act["saved_bytes"] / GIB},
        {"component": "activations",
         "what": f"working set: the {loss} loss's (" + ("8V per token" if loss == "plain" else "one chunk")
                 + ") or one layer's gradients, the larger",
         "formula": "max(loss, layer*b*s)", "gib": act["backward_working_bytes"] / GIB},
        {"component": "overhead", "what": "CUDA context + cuBLAS/NCCL workspaces", "formula": f"{cuda_context_gib} GiB",
         "gib": cuda_context_gib},
        {"component": "overhead", "what": f"allocator fragmentation ({100 * fragmentation:.0f}% of the rest)",
         "formula": f"{fragmentation}*(static + dynamic)", "gib": frag / GIB},
    ]
    return {
        "preset": getattr(config, "preset_name", None), "n_params": n, "micro_batch": micro_batch, "seq_len": seq_len,
        "precision": precision, "strategy": strategy, "strategy_description": STRATEGY_HELP[strategy],
        "world_size": world_size, "attention": act["attention"], "activation_checkpointing": activation_checkpointing,
        "loss": loss,
        "grad_accum_dtype": grad_accum_dtype if precision == "bf16" else "fp32",
        "components_gib": {
            "weights": comp["weights"] / GIB, "gradients": comp["gradients"] / GIB, "optimizer": comp["optimizer"] / GIB,
            "activations": act["peak_bytes"] / GIB, "step_transient": comp["step"] / GIB, "overhead": overhead / GIB,
        },
        "model_states_gib": static / GIB,
        "peak_phase": "forward/backward" if act["peak_bytes"] >= comp["step"] else "optimizer step",
        "total_gib": total / GIB,
        "terms": terms,
        "activation_model": act,
    }


# ================================================================================================
# Micro-batch and accumulation
# ================================================================================================
SAFETY_MARGIN = 0.05  # keep 5% free for what the estimate leaves out (NCCL buffers, allocator spikes, eval batches)


def _divisors(n: int) -> list[int]:
    return sorted({d for k in range(1, int(math.isqrt(n)) + 1) if n % k == 0 for d in (k, n // k)})


def plan_batch(
    gpu: str,
    num_gpus: int,
    preset: str,
    seq_len: int,
    *,
    global_batch_tokens: int | None = None,
    global_batch_sequences: int | None = None,
    strategy: str = "zero1",
    precision: str = "bf16",
    attention: str = "flash",
    activation_checkpointing: bool = False,
    loss: str = "plain",
    safety_margin: float = SAFETY_MARGIN,
    gpu_memory_gb: float | None = None,
    max_micro_batch: int = 4096,
) -> dict:
    """Largest micro-batch whose estimated peak fits in (1 - margin) of the GPU, then the largest
    micro-batch <= that which divides the per-GPU share of the global batch, and its accumulation:
    global_sequences = micro_batch * accumulation * num_gpus exactly."""
    gpu = canonical_gpu_name(gpu)
    capacity = gpu_memory_gb if gpu_memory_gb is not None else GPU_MEMORY_GB[gpu]
    budget = capacity * (1 - safety_margin)
    config = DecoderConfig.from_preset(preset)
    common = dict(seq_len=seq_len, precision=precision, strategy=strategy, world_size=num_gpus,
                  attention=attention, activation_checkpointing=activation_checkpointing, loss=loss)

    def total(b: int, **over: Any) -> float:
        return estimate_memory(config, micro_batch=b, **{**common, **over})["total_gib"]

    if total(1) > budget:
        alternatives = []
        for ckpt in (False, True):
            for strat in STRATEGIES:
                if (strat, ckpt) != (strategy, activation_checkpointing) and total(1, strategy=strat, activation_checkpointing=ckpt) <= budget:
                    alternatives.append(f"--strategy {strat}" + (" --activation-checkpointing" if ckpt else ""))
        hint = ("; these fit micro-batch 1: " + ", ".join(alternatives)) if alternatives else \
            "; nothing in this model fits: use more GPUs with zero3/fsdp, a shorter --seq-len, or a larger GPU"
        raise ValueError(
            f"{preset} does not fit on one {gpu} ({capacity:g} GiB, {100 * safety_margin:.0f}% kept free) even at "
            f"micro-batch 1 with seq_len {seq_len}, {strategy}, {precision}: estimated {total(1):.1f} GiB{hint}"
        )
    lo, hi = 1, 2
    while hi <= max_micro_batch and total(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, max_micro_batch + 1)
    while hi - lo > 1:  # total(lo) fits, total(hi) does not (or hi is past the cap)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    max_fit = lo

    notes: list[str] = []
    if global_batch_tokens is not None and global_batch_sequences is not None:
        raise ValueError("give --global-batch-tokens or --global-batch-sequences, not both")
    if global_batch_tokens is not None:
        if global_batch_tokens % seq_len:
            raise ValueError(
                f"global batch of {global_batch_tokens} tokens is not a whole number of {seq_len}-token sequences; "
                f"use {global_batch_tokens // seq_len * seq_len} or {(global_batch_tokens // seq_len + 1) * seq_len}"
            )
        global_batch_sequences = global_batch_tokens // seq_len
    result: dict[str, Any] = {
        "gpu": gpu, "num_gpus": num_gpus, "gpu_memory_gib": capacity, "safety_margin": safety_margin,
        "budget_gib": budget, "preset": preset, "seq_len": seq_len, "strategy": strategy, "precision": precision,
        "attention": ATTENTION_BACKENDS.get(attention, attention), "activation_checkpointing": activation_checkpointing,
        "loss": loss, "max_micro_batch_fit": max_fit, "memory_at_max_fit_gib": total(max_fit),
    }
    if global_batch_sequences is None:
        micro, accum = max_fit, 1
        notes.append("no global batch given: accumulation 1 at the largest micro-batch that fits")
        global_batch_sequences = micro * num_gpus
    else:
        if global_batch_sequences % num_gpus:
            lower = global_batch_sequences // num_gpus * num_gpus
            raise ValueError(
                f"global batch of {global_batch_sequences} sequences is not divisible by {num_gpus} GPUs; "
                f"use {lower or num_gpus} or {lower + num_gpus} sequences"
            )
        per_gpu = global_batch_sequences // num_gpus
        micro = max(d for d in _divisors(per_gpu) if d <= max_fit)
        accum = per_gpu // micro
        if micro < min(max_fit, per_gpu):
            notes.append(
                f"micro-batch {max_fit} fits but does not divide the {per_gpu} sequences per GPU; the largest "
                f"divisor that fits is {micro} (divisors: {', '.join(map(str, _divisors(per_gpu)))})"
            )
    mem = estimate_memory(config, micro_batch=micro, **common)
    result.update(
        micro_batch=micro, grad_accum_steps=accum, global_batch_sequences=global_batch_sequences,
        tokens_per_iter=global_batch_sequences * seq_len, memory_gib=mem["total_gib"],
        memory_components_gib=mem["components_gib"],
        divisibility=f"{global_batch_sequences} = {micro} (micro) x {accum} (accum) x {num_gpus} (GPUs)",
        notes=notes,
    )
    return result


# ================================================================================================
# Wall-clock
# ================================================================================================
DEFAULT_SETUPS = ("2xA6000", "8xB200")


def estimate_time(
    preset: str,
    *,
    tokens: float | None = None,
    iters: int | None = None,
    tokens_per_iter: int | None = None,
    seq_len: int = 2048,
    setups: Sequence[str | tuple[int, str]] = DEFAULT_SETUPS,
    mfu: float = 0.4,
    dtype: str = "bf16",
) -> dict:
    """Wall-clock = tokens * flops_per_token / (MFU * dense peak * GPUs), per hardware setup.
    Without tokens or iterations, the Chinchilla target D = 20N (total parameters) is used."""
    if not 0 < mfu <= 1:
        raise ValueError(f"MFU is a fraction in (0, 1], got {mfu} (0.4 is a good dense-training figure)")
    config = DecoderConfig.from_preset(preset)
    n = count_parameters(config)["total"]
    fpt = flops_per_token(config, seq_len)
    source = "given"
    if tokens is None and iters is not None:
        if not tokens_per_iter:
            raise ValueError("--iters needs --tokens-per-iter (global batch tokens per optimizer step)")
        tokens = float(iters) * tokens_per_iter
    if tokens is None:
        tokens, source = TOKENS_PER_PARAM * n, "Chinchilla target 20 x N (total params)"
    if iters is None and tokens_per_iter:
        iters = math.ceil(tokens / tokens_per_iter)
    rows = []
    for setup in setups:
        count, gpu = parse_gpu_setup(setup) if isinstance(setup, str) else (setup[0], canonical_gpu_name(setup[1]))
        peak = peak_flops(gpu, dtype)
        if peak is None:
            raise ValueError(f"{gpu} has no {dtype} tensor-core peak in training/hardware.py; pick another --dtype")
        tps = mfu * peak * count / fpt
        seconds = tokens / tps
        rows.append({
            "setup": f"{count}x{gpu}", "gpu": gpu, "num_gpus": count, "peak_flops_per_gpu": peak,
            "tokens_per_sec": tps, "tokens_per_sec_per_gpu": tps / count, "tokens_per_hour": tps * 3600,
            "seconds": seconds, "hours": seconds / 3600, "days": seconds / 86400,
            "seconds_per_iter": seconds / iters if iters else None,
        })
    return {
        "preset": preset, "n_params": n, "seq_len": seq_len, "flops_per_token": fpt, "tokens": tokens,
        "tokens_source": source, "iters": iters, "tokens_per_iter": tokens_per_iter, "total_flops": fpt * tokens,
        "mfu": mfu, "dtype": dtype, "setups": rows,
        "formula": "seconds = tokens * flops_per_token / (mfu * peak_flops_per_gpu * num_gpus)",
    }


# ================================================================================================
# CLI
# ================================================================================================
def _number(text: str) -> float:
    """'36e9', '36B', '1.5T', '720_896', '2.2M' -> float."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    if t and t[-1].lower() in scale:
        return float(t[:-1]) * scale[t[-1].lower()]
    try:
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (examples: 36e9, 36B, 1.5T)") from None


def _int(text: str) -> int:
    value = _number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _b(x: float | None, digits: int = 3) -> str:
    return fmt(x / 1e9 if x is not None else None, f".{digits}f")


def _print_chinchilla(r: dict) -> None:
    rows = [["N (parameters)", f"{r['n_params']:,.0f}", r["n_params_definition"]]]
    if "non_embedding_params" in r:
        rows.append(["N non-embedding", f"{r['non_embedding_params']:,.0f}", "for reference (Kaplan's N)"])
    rows.append(["target D = 20N", f"{r['target_tokens']:,.0f}", f"predicted loss {r['target_loss']:.4f}"])
    if r["target_iters"]:
        rows.append(["target iterations", f"{r['target_iters']:,}", f"at {r['tokens_per_iter']:,} tokens/iter"])
    flops = f"{r['target_flops']:.3e} (flops_per_token at seq {r['seq_len']})" if r.get("target_flops") else ""
    rows.append(["target compute 6ND", f"{r['target_flops_6nd']:.3e}", flops])
    if "tokens" in r:
        rows.append(["D (this run)", f"{r['tokens']:,.0f}", f"D/N = {r['tokens_per_param']:.1f}: {r['status']} "
                     f"(compliant: {TOKENS_PER_PARAM * (1 - COMPLIANT_BAND):g}-{TOKENS_PER_PARAM * (1 + COMPLIANT_BAND):g})"])
        if r["iters"]:
            rows.append(["iterations", f"{r['iters']:,}", f"at {r['tokens_per_iter']:,} tokens/iter"])
        rows.append(["predicted loss", f"{r['loss']:.4f}", "L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28"])
        rows.append(["compute 6ND", f"{r['flops_6nd']:.3e}", f"{r['flops']:.3e} by flops_per_token" if r.get("flops") else ""])
    print(format_table(["quantity", "value", "note"], rows))


def _arch_rows(rows: list[dict]) -> list[list[str]]:
    return [[i, r["family"], r["layers"], r["hidden"], f"{r['heads']}/{r['kv_heads']}", r["intermediate"],
             _b(r["n_params"]), _b(r["non_embedding_params"]), f"{r['flops_per_token']:.3e}", _b(r["tokens"], 1),
             f"{r['tokens_per_param']:.1f}", f"{r['loss']:.4f}"] for i, r in enumerate(rows, 1)]


ARCH_HEADERS = ["#", "family", "layers", "hidden", "heads/kv", "mlp", "N (B)", "N non-emb (B)", "FLOPs/token",
                "D (B)", "D/N", "loss"]


def _print_optimal(r: dict) -> None:
    c = r["closed_form"]
    print(f"FLOPs budget C = {r['flops']:.3e}; N = {r['n_params_definition']}")
    print(f"\nclosed form (C = 6ND; G = {c['G']:.4f}, a = {c['a']:.4f}, b = {c['b']:.4f}):")
    print(format_table(["", "N (B)", "D (B)", "D/N", "loss"],
                       [["closed-form optimum", _b(c["n_params"]), _b(c["tokens"], 1), f"{c['tokens_per_param']:.1f}",
                         f"{c['loss']:.4f}"]]))
    print(f"\ngrid search, unconstrained ({r['feasible']} of {r['grid_size']} architectures feasible; "
          f"D = C / flops_per_token at seq {r['seq_len']}):")
    print(format_table(ARCH_HEADERS, _arch_rows(r["unconstrained"])))
    print(f"\ngrid search, {r['constraint']['description']}:")
    print(format_table(ARCH_HEADERS, _arch_rows(r["constrained"])) if r["constrained"] else "  (none)")
    print("\nbest per family:")
    print(format_table(ARCH_HEADERS, _arch_rows(list(r["best_per_family"].values()))))
    if "seed_comparison" in r:
        print("\nseed project's results at this budget, under the same fit:")
        print(format_table(["", "N (B)", "D (B)", "D/N", "loss", "6ND / C"],
                           [[s["name"], _b(s["n_params"]), _b(s["tokens"], 1), f"{s['tokens_per_param']:.1f}",
                             f"{s['loss']:.4f}", f"{s['flops_6nd'] / r['flops']:.2f}"] for s in r["seed_comparison"]]))
    for note in r["notes"]:
        print(f"note: {note}")


def _print_memory(results: list[dict]) -> None:
    first = results[0]
    print(f"{first['preset'] or 'model'}: {first['n_params']:,} params (P), micro-batch {first['micro_batch']}, "
          f"seq {first['seq_len']}, {first['precision']}, attention {first['attention']}, {first['loss']} loss, "
          f"activation checkpointing {'on' if first['activation_checkpointing'] else 'off'}, W = {first['world_size']}")
    headers = ["GiB per GPU"] + [r["strategy"] for r in results]
    keys = ["weights", "gradients", "optimizer", "activations", "step_transient", "overhead"]
    rows = [[k] + [f"{r['components_gib'][k]:.2f}" for r in results] for k in keys]
    rows.append(["total (peak)"] + [f"{r['total_gib']:.2f}" for r in results])
    rows.append(["peak phase"] + [r["peak_phase"] for r in results])
    print(format_table(headers, rows))
    print("(step_transient is allocated inside optimizer.step, when activations are freed: the larger of the two counts)")
    for r in results:
        print(f"\n{r['strategy']}: {r['strategy_description']}")
        print(format_table(["component", "what", "formula", "GiB"],
                           [[t["component"], t["what"], t["formula"], f"{t['gib']:.3f}"] for t in r["terms"]]))
    act = first["activation_model"]
    print(f"\nactivation bytes per token per layer (e = {act['compute_bytes']}, r = {act['residual_bytes']}; "
          f"total {act['layer_bytes_per_token']:,} = {act['layer_bytes_per_token_over_h']:.1f} h):")
    print(format_table(["term", "bytes/token/layer"], [[k, f"{v:,}"] for k, v in act["per_layer_per_token_bytes"].items()]
                       + [[f"once per token: {k}", f"{v:,}"] for k, v in act["once_per_token_bytes"].items()]))


def _print_batch(r: dict) -> None:
    rows = [
        ["GPU", f"{r['num_gpus']} x {r['gpu']} ({r['gpu_memory_gib']:g} GiB, budget {r['budget_gib']:.1f} GiB "
                f"with {100 * r['safety_margin']:.0f}% kept free)"],
        ["model", f"{r['preset']}, seq {r['seq_len']}, {r['precision']}, {r['strategy']}, attention {r['attention']}, "
                  f"{r['loss']} loss, checkpointing {'on' if r['activation_checkpointing'] else 'off'}"],
        ["largest micro-batch that fits", f"{r['max_micro_batch_fit']} ({r['memory_at_max_fit_gib']:.1f} GiB)"],
        ["chosen micro-batch", f"{r['micro_batch']} ({r['memory_gib']:.1f} GiB estimated peak)"],
        ["gradient accumulation", str(r["grad_accum_steps"])],
        ["global batch", f"{r['global_batch_sequences']} sequences = {r['tokens_per_iter']:,} tokens"],
        ["divisibility", r["divisibility"]],
    ]
    print(format_table(["", "plan"], rows))
    comp = r["memory_components_gib"]
    print("memory at the chosen micro-batch (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in comp.items()))
    for note in r["notes"]:
        print(f"note: {note}")


def _print_time(r: dict) -> None:
    print(f"{r['preset']}: {r['n_params'] / 1e9:.3f}B params, {r['tokens']:,.0f} tokens ({r['tokens_source']}), "
          f"{r['flops_per_token']:.3e} FLOPs/token at seq {r['seq_len']} -> {r['total_flops']:.3e} FLOPs; "
          f"MFU {r['mfu']:.2f}, {r['dtype']} dense peaks"
          + (f"; {r['iters']:,} iterations of {r['tokens_per_iter']:,} tokens" if r["iters"] else ""))
    print(format_table(
        ["setup", "peak/GPU (TFLOP/s)", "tokens/s", "Mtokens/h", "s/iter", "hours", "days"],
        [[s["setup"], f"{s['peak_flops_per_gpu'] / 1e12:,.1f}", f"{s['tokens_per_sec']:,.0f}",
          f"{s['tokens_per_hour'] / 1e6:,.1f}", fmt(s["seconds_per_iter"], ".2f"), f"{s['hours']:,.1f}",
          f"{s['days']:,.2f}"] for s in r["setups"]]))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.planning", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = ", ".join(sorted(PRESETS))

    def add(name: str, help_: str, doc: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' for JSON on stdout only)")
        return p

    p = add("chinchilla", "D = 20N target, D/N status, iterations, predicted loss",
            "Chinchilla check of a model and token count. N = total parameters (Hoffmann et al.'s convention).")
    p.add_argument("--preset", help=f"one of: {presets}")
    p.add_argument("--params", type=_number, help="N, total parameters (instead of --preset), e.g. 1.8B")
    p.add_argument("--tokens", type=_number, help="D, training tokens of the run, e.g. 36B")
    p.add_argument("--tokens-per-iter", type=_int, help="global batch tokens per optimizer step (for iteration counts)")
    p.add_argument("--seq-len", type=_int, default=2048, help="for FLOPs per token (default 2048)")

    p = add("optimal", "compute-optimal N, D for a FLOPs budget: closed form + architecture grid",
            "Closed-form optimum of the approach-3 fit under C = 6ND, and a grid of gpt2/llama3/qwen3-shaped\n"
            "architectures (heads = hidden/128, family MLP ratio, GQA and vocabulary) ranked by predicted loss\n"
            "with D = C / flops_per_token(config, seq_len).")
    p.add_argument("--flops", type=_number, required=True, help="training compute budget C in FLOPs, e.g. 1.36e21")
    p.add_argument("--seq-len", type=_int, default=2048, help="sequence length for FLOPs per token (default 2048)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--min-tokens-per-param", type=float, help="constrained search: D/N >= this (e.g. 20)")
    p.add_argument("--max-tokens-per-param", type=float, help="constrained search: D/N <= this")
    p.add_argument("--floor-tokens-per-param", type=float, default=1.0,
                   help="architectures seeing fewer tokens per parameter are infeasible (default 1)")
    p.add_argument("--top", type=int, default=10, help="rows per ranked table (default 10)")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", required=True, help=f"one of: {presets}")
        p.add_argument("--seq-len", type=_int, default=2048, help="tokens per sequence (default 2048)")
        p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                       help="bf16/fp16 mixed precision or pure fp32 (default bf16)")
        p.add_argument("--attention", default="flash", choices=list(ATTENTION_BACKENDS),
                       help="flash/sdpa: O(S) activations; eager: O(S^2) score matrices (default flash)")
        p.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
        p.add_argument("--loss", default="plain", choices=["plain", "chunked"],
                       help="plain: model(...).loss with full logits (what training/trainer.py calls); chunked: "
                            "model(..., return_logits=False), no (tokens x vocab) tensor (default plain)")

    p = add("memory", "per-GPU memory: weights, gradients, optimizer, activations, overhead",
            "Per-GPU peak memory estimate (GiB). See estimate_memory / activation_memory for every formula.")
    model_args(p)
    p.add_argument("--micro-batch", type=_int, default=1, help="sequences per GPU per forward (default 1)")
    p.add_argument("--strategy", default="zero1",
                   help="comma list of " + "; ".join(f"{k}: {v}" for k, v in STRATEGY_HELP.items()) + " (default zero1)")
    p.add_argument("--world-size", type=_int, default=1, help="data-parallel GPUs sharing the states (default 1)")
    p.add_argument("--grad-accum-dtype", choices=["bf16", "fp32"],
                   help="DeepSpeed gradient accumulation dtype (default: fp32 for zero1 as in ds_configs, else bf16)")

    p = add("batch", "largest micro-batch that fits + accumulation for a global batch",
            "Largest micro-batch whose estimated peak fits in the GPU (minus a safety margin), then the\n"
            "micro-batch x accumulation x GPUs that reaches the global batch exactly.")
    model_args(p)
    p.add_argument("--gpu", required=True, help=f"one of: {', '.join(known_gpus())} (or a torch device name)")
    p.add_argument("--num-gpus", type=_int, default=1, help="data-parallel GPUs (default 1)")
    p.add_argument("--global-batch-tokens", type=_int, help="target tokens per optimizer step (multiple of seq-len)")
    p.add_argument("--global-batch-sequences", type=_int, help="target sequences per optimizer step")
    p.add_argument("--strategy", default="zero1", choices=STRATEGIES, help="parallel strategy (default zero1)")
    p.add_argument("--safety-margin", type=float, default=SAFETY_MARGIN, help="fraction of GPU memory kept free (default 0.05)")
    p.add_argument("--gpu-memory-gb", type=float, help="override the table's memory (e.g. 40 for an A100 40GB)")

    p = add("time", "iterations, tokens and wall-clock on given hardware",
            "Wall-clock from tokens, FLOPs per token, the dense peak table and an MFU (assumed or from a log).")
    p.add_argument("--preset", required=True, help=f"one of: {presets}")
    p.add_argument("--tokens", type=_number, help="training tokens (default: 20 x total params)")
    p.add_argument("--iters", type=_int, help="optimizer steps (with --tokens-per-iter), instead of --tokens")
    p.add_argument("--tokens-per-iter", type=_int, help="global batch tokens per optimizer step")
    p.add_argument("--seq-len", type=_int, default=2048, help="for FLOPs per token (default 2048)")
    p.add_argument("--gpu", help="GPU model (with --num-gpus); default: compare " + " vs ".join(DEFAULT_SETUPS))
    p.add_argument("--num-gpus", type=_int, default=1, help="GPUs with --gpu (default 1)")
    p.add_argument("--setup", action="append", default=[], metavar="KxGPU", help="a setup like 8xB200; repeatable")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU (default 0.4)")
    p.add_argument("--mfu-from-log", metavar="RUN_DIR", help="use the mean MFU measured in a run log instead")
    p.add_argument("--dtype", default="bf16", help="peak table column (default bf16)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "chinchilla":
            result = chinchilla(args.params, args.tokens, preset=args.preset, seq_len=args.seq_len,
                                tokens_per_iter=args.tokens_per_iter)
            show = _print_chinchilla
        elif args.command == "optimal":
            result = optimal(args.flops, seq_len=args.seq_len, families=[f for f in args.families.split(",") if f],
                             min_tokens_per_param=args.min_tokens_per_param, max_tokens_per_param=args.max_tokens_per_param,
                             floor_tokens_per_param=args.floor_tokens_per_param, top=args.top)
            show = _print_optimal
        elif args.command == "memory":
            results = [estimate_memory(args.preset, micro_batch=args.micro_batch, seq_len=args.seq_len,
                                       precision=args.precision, strategy=s.strip(), world_size=args.world_size,
                                       attention=args.attention, activation_checkpointing=args.activation_checkpointing,
                                       loss=args.loss, grad_accum_dtype=args.grad_accum_dtype)
                       for s in args.strategy.split(",") if s.strip()]
            result = results[0] if len(results) == 1 else {"strategies": results}
            show = lambda _r: _print_memory(results)  # noqa: E731
        elif args.command == "batch":
            result = plan_batch(args.gpu, args.num_gpus, args.preset, args.seq_len,
                                global_batch_tokens=args.global_batch_tokens,
                                global_batch_sequences=args.global_batch_sequences, strategy=args.strategy,
                                precision=args.precision, attention=args.attention,
                                activation_checkpointing=args.activation_checkpointing, loss=args.loss,
                                safety_margin=args.safety_margin, gpu_memory_gb=args.gpu_memory_gb)
            show = _print_batch
        else:
            setups = list(args.setup) + ([(args.num_gpus, args.gpu)] if args.gpu else [])
            mfu = args.mfu
            if args.mfu_from_log:
                mfu = summarize(args.mfu_from_log)["mfu_mean"]
                if mfu is None:
                    raise ValueError(f"{args.mfu_from_log} has no MFU values (a CPU run, or an unknown GPU): pass --mfu")
            result = estimate_time(args.preset, tokens=args.tokens, iters=args.iters, tokens_per_iter=args.tokens_per_iter,
                                   seq_len=args.seq_len, setups=setups or DEFAULT_SETUPS, mfu=mfu, dtype=args.dtype)
            show = _print_time
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    if args.json == "-":
        write_json(result, "-")
        return 0
    show(result)
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
