"""Per-GPU peak memory, in GiB: weights, gradients and optimizer states per parallel strategy, activations
per layer and per token, and overhead. Every formula is in the docstrings of activation_memory,
_model_state_terms and estimate_memory."""

from __future__ import annotations

from modeling import DecoderConfig, DecoderForCausalLM, count_parameters
from modeling.losses import auto_chunk_size
from modeling.names import ATTN_IMPLEMENTATIONS

from ..precision import get_precision

GIB = 2**30  # bytes per GiB: every memory figure here is in GiB

STRATEGIES = ("ddp", "zero0", "zero1", "zero2", "zero3", "fsdp")
STRATEGY_HELP = {
    "ddp": "accelerate/torch DDP, no sharding (bf16: fp32 weights under torch.autocast)",
    "zero0": "DeepSpeed, no partitioning (ds_configs/zero0.json)",
    "zero1": "DeepSpeed ZeRO-1: optimizer states (+ fp32 master) partitioned (ds_configs/zero1.json)",
    "zero2": "DeepSpeed ZeRO-2: + gradients partitioned",
    "zero3": "DeepSpeed ZeRO-3: + parameters partitioned",
    "fsdp": "PyTorch FSDP2 full shard, bf16 compute over fp32 sharded parameters",
}
# The planner's attention names: the model's (modeling/names.py) plus "flash" for flash_attention_2.
ATTENTION_BACKENDS = {"flash": "flash", **{name: "flash" if name == "flash_attention_2" else name
                                          for name in ATTN_IMPLEMENTATIONS if name != "auto"}}
CUDA_CONTEXT_GIB = 1.0  # CUDA context + loaded kernels (roughly 0.5 GiB per torch process) + cuBLAS/NCCL workspaces
FRAGMENTATION = 0.05  # caching-allocator slack: reserved exceeds allocated by a few % in steady training
# DeepSpeed knobs as this repo's ds_configs set them (elements, not bytes).
DS_REDUCE_BUCKET = 5e8  # reduce_bucket_size in zero1/2/3.json
DS_MAX_LIVE_PARAMETERS = 1e9  # stage3_max_live_parameters in zero3.json


def model_loss_chunk_size(config: DecoderConfig) -> int:
    """Tokens per chunk of the model's chunked LM-head loss, as DecoderForCausalLM.forward sizes it."""
    return DecoderForCausalLM.loss_chunk_size or auto_chunk_size(config.vocab_size)


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
    checkpoint_every: int = 1,
    loss: str = "chunked",
    loss_chunk_size: int | None = None,
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
      eager        e(q + 2kv) [q grouped by KV head, k and v: no GQA expansion] + e*q [output]
                   + (4 + e)*a*s [fp32 softmax and its e-byte copy] (+ a transient e-byte s x s mask)
      qk-norm      (4 + e)(q + kv) + 4(a + kv_heads)  (Qwen3; fp32 copy + normalised + 1/rms per head;
                   in fp32 the "copy" is the projection output itself: e(q + kv) [+ e(q + 2kv) under eager])
      MLP          SwiGLU 4i*e [gate|up, silu(gate), product]; plain 2i*e [pre- and post-activation]
      dropout p>0  2h + (eager: a*s) one-byte masks (CUDA's fused dropout keeps bool masks; the CPU
                   fallback keeps e-byte ones; FlashAttention regenerates its dropout mask)
    With r = e = 2, eager attention, a 4h GELU MLP, LayerNorm and dropout this is 34h + 7as bytes: Korthikanti's
    34sbh exactly, and 7as instead of 5as because our softmax is computed in fp32.
    Once per token: final norm, token ids (8), and the loss head, which depends on `loss`:
      plain    model(...).loss (what a plain HF-style loop calls): bf16 logits, an fp32 copy, cross_entropy.
               Keeps the fp32 log-softmax (4V) and the targets (8); its backward working set, fp32
               gradients of the log-probs and of the logits (8V per token), coexists with every
               layer's saved tensors at the start of backward.
      chunked  model(..., return_logits=False), as training/trainer.py calls it (the default here):
               modeling.losses.linear_cross_entropy computes loss and
               gradients chunk by chunk in the forward and keeps only d/dhidden (e*h, in place of the
               head matmul's saved input) and d/dweight (fp32, 4*V*h per micro-batch); its transient is
               one chunk of logits and fp32 log-probs, chunk*V*(e + 4), + an e-byte V*h matmul result
               (+ the autocast bf16 copy of the head weight under DDP).
    Peak: the saved tensors plus the larger of the loss's working set and one layer's activation
    gradients. With checkpointing only each recomputed block's input (r*h) is kept; one block is
    recomputed at a time (its activations + their gradients: 2 layers' worth). checkpoint_every = N
    recomputes blocks 0, N, 2N, ... only (transformers' every_n_layers): ceil(L/N) blocks keep r*h,
    the other L - ceil(L/N) keep everything.

    The saved-tensor part is checked byte for byte against what autograd saves on CPU, for every
    family, precision and backend (tests/training/test_planning.py); the backward working set is a model."""
    attention = ATTENTION_BACKENDS.get(attention, attention)
    if attention not in ATTENTION_BACKENDS.values():
        raise ValueError(f"unknown attention backend {attention!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    e, r = compute_bytes, residual_bytes
    h, L, V, s = config.hidden_size, config.num_hidden_layers, config.vocab_size, seq_len
    a, hd = config.num_attention_heads, config.head_dim
    q, kv, i = a * hd, config.num_key_value_heads * hd, config.intermediate_size
    rope = config.position_embedding == "rope"

    terms: dict[str, int] = {"norms (2 per block)": 2 * _norm_bytes(config, h, e, r)}
    if attention == "eager":
        terms["attention q (grouped), k, v (KV width)"] = e * (q + 2 * kv)
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
    mask = e * s * s if attention == "eager" else 0  # the additive causal mask each eager layer adds (not kept)

    tokens = micro_batch * seq_len
    if loss_chunk_size is None:  # what the model's chunked loss uses (modeling/losses.py)
        loss_chunk_size = model_loss_chunk_size(config)
    if loss == "plain":
        loss_working = tokens * 8 * V
    else:
        per_batch["chunked loss: fp32 d/d(head weight)"] = 4 * V * h
        loss_working = min(loss_chunk_size, tokens) * V * (e + 4) + (e * V * h if e != 4 else 0) \
            + (e * V * h if r != e else 0)  # autocast: bf16 copy of the fp32 head weight
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    recomputed = -(-L // checkpoint_every) if checkpointing else 0  # blocks 0, N, 2N, ...
    if checkpointing:
        saved = tokens * (recomputed * r * h + (L - recomputed) * layer + head_bytes) + sum(per_batch.values())
        working = max(loss_working, 2 * (tokens * layer + mask))
        kept = (f"block inputs only, {r}*h per layer per token; the recomputed block is in the working set"
                if recomputed == L else
                f"{recomputed} of {L} blocks recomputed (every {checkpoint_every}th) keep {r}*h per token, the rest everything")
    else:
        saved = tokens * (L * layer + head_bytes) + sum(per_batch.values())
        working = max(loss_working, tokens * layer + mask)
        kept = "every layer's saved tensors"
    return {
        "attention": attention, "compute_bytes": e, "residual_bytes": r, "checkpointing": checkpointing,
        "checkpoint_every": checkpoint_every if checkpointing else None, "recomputed_layers": recomputed, "kept": kept,
        "loss": loss, "loss_chunk_size": loss_chunk_size if loss != "plain" else None, "loss_working_bytes": loss_working,
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
    activation_checkpointing_every: int = 1,
    loss: str = "chunked",
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
    # fp16 costs what bf16 costs (same bytes, same master copies): the formulas below say "bf16" for both
    precision = "bf16" if get_precision(precision).mixed else "fp32"
    if micro_batch < 1 or seq_len < 1 or world_size < 1:
        raise ValueError(f"micro_batch, seq_len and world_size must be >= 1 (got {micro_batch}, {seq_len}, {world_size})")
    config.check_seq_len(seq_len)  # a learned position table longer sequences cannot use: no plan for them
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
                            attention=attention, checkpointing=activation_checkpointing,
                            checkpoint_every=activation_checkpointing_every, loss=loss)
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
        "activation_checkpointing_every": act["checkpoint_every"], "loss": loss,
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
