"""LM-head + cross-entropy without the (tokens, vocab) logits tensor: chunked, gradients in the forward.

Why: with LLaMA 3's 128k and Qwen3's 152k vocabularies the plain path
    logits = lm_head(h)                       # (B*T, V) in bf16
    loss = cross_entropy(logits.float(), y)   # + an fp32 copy, + fp32 log-softmax saved for backward
holds several (B*T, V) tensors at the peak: at B*T = 16k tokens and V = 152k that is ~5 GB bf16 and
~10 GB per fp32 copy, more than all the transformer activations of a 1.8B model, and it caps the
micro-batch. Here the tokens are processed in chunks of `chunk_size`; for each chunk the logits are
computed, the loss and d(loss)/d(logits) = softmax - onehot are formed in fp32, and the two gradient
matmuls (w.r.t. the hidden states and the head weight) run right away, so only one chunk of logits
exists at a time. Backward then only scales the stored gradients by the incoming grad (no recompute:
the FLOPs equal the plain path's, unlike wrapping each chunk in torch.utils.checkpoint, which repeats
the head's forward matmul, ~+1/3 of the head's cost).
This is the scheme of Liger-Kernel's FusedLinearCrossEntropy (Hsu et al. 2024, arXiv:2410.10989)
and of Apple's Cut Cross-Entropy (Wijmans et al. 2024, arXiv:2411.09009), in plain torch ops so it
runs on CPU and under torch.compile.

Numerics match `F.cross_entropy(lm_head(h).float(), y, ignore_index=-100)` (mean over non-ignored
targets, NaN when every target is ignored): the logits are formed in the same compute dtype (the
autocast dtype when autocast is on), softmax and loss in fp32; the weight gradient is accumulated
over chunks in fp32 (the plain path rounds one big matmul once), so differences are at rounding level.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

IGNORE_INDEX = -100
# Bytes of one chunk's fp32 log-probabilities. The chunk size trades transient memory (about twice
# this per chunk: bf16 logits, fp32 log-probs, bf16 gradient) against the number of chunks, each of
# which reads and writes the fp32 weight-gradient accumulator once (8*V*C bytes: 2.5 GB at V=152k,
# C=2048). 2 GiB: 4096-token chunks at V=128k, 2048 at 152k (4 and 8 chunks for a 16k-token
# micro-batch), a single chunk for small vocabularies.
CHUNK_BYTES = 2**31


def auto_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk: the largest power of two whose (tokens, vocab) fp32 block fits CHUNK_BYTES (>= 256)."""
    return max(256, 2 ** int(math.log2(CHUNK_BYTES // (4 * vocab_size))))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul would run in here: the autocast dtype when autocast is enabled, else t's."""
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """loss = mean over valid rows of CE(hidden @ weight.T, targets); gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        # hidden (N, C), weight (V, C), targets (N,) with IGNORE_INDEX for "no target"
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = _compute_dtype(hidden)
        h = hidden.to(dtype)
        w = weight.to(dtype)  # one cast for all chunks (autocast would cast once per matmul)
        n_rows = h.shape[0]
        valid = targets != IGNORE_INDEX  # (N,)
        # 1 / n_valid stays a tensor (no host sync); inf when nothing is valid -> NaN loss, as F.cross_entropy
        inv_n = 1.0 / valid.sum().to(torch.float32)
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        with torch.autocast(h.device.type, enabled=False):  # dtypes are explicit below
            for start in range(0, n_rows, chunk_size):  # static trip count: unrolled by torch.compile
                end = min(start + chunk_size, n_rows)
                h_c, t_c, valid_c = h[start:end], targets[start:end], valid[start:end]
                # (n, V) log-probabilities in fp32 from the low-precision logits (CUDA: one kernel reads bf16
                # and writes fp32, no separate fp32 copy as the plain path's logits.float(); CPU: a cast first)
                logp = torch.log_softmax(h_c @ w.t(), dim=-1, dtype=torch.float32)
                safe_t = t_c.clamp(min=0).unsqueeze(1)  # (n, 1); ignored rows read column 0, masked below
                loss_sum = loss_sum - torch.where(valid_c, logp.gather(1, safe_t).squeeze(1), 0.0).sum()
                if not (need_h or need_w):
                    continue
                # d CE / d logits = softmax - onehot: exp and the -1 at the target in place in fp32, then
                # one cast to the matmul dtype (bf16 exp/scatter would each round-trip through fp32 on CPU).
                # The ignored rows and the 1/n_valid scale are applied on the (n, C) side (masks below, the
                # scalar in backward): V/C times cheaper than another pass over (n, V).
                g = logp.exp_()
                g.scatter_add_(1, safe_t, torch.full(safe_t.shape, -1.0, dtype=g.dtype, device=g.device))
                g = g.to(dtype)
                keep = valid_c.unsqueeze(1).to(dtype)  # (n, 1)
                if need_h:
                    grad_h[start:end] = (g @ w) * keep  # (n, C)
                if need_w:
                    grad_w.addmm_(g.t(), h_c * keep) if dtype == torch.float32 else grad_w.add_(g.t() @ (h_c * keep))
        ctx.save_for_backward(grad_h, grad_w, inv_n)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return loss_sum * inv_n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, inv_n = ctx.saved_tensors
        scale = grad_out * inv_n  # chain rule through the mean: a device scalar, no sync
        # In place (the stored gradients are ours alone); a second backward through this graph
        # (retain_graph=True) is refused by autograd's saved-tensor version check instead of scaling twice.
        if grad_h is not None:
            grad_h = grad_h.mul_(scale.to(grad_h.dtype)).to(ctx.hidden_dtype)
        if grad_w is not None:
            grad_w = grad_w.mul_(scale).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX = -100 skipped), never
    materialising the full logits.  hidden: (..., C), weight: (V, C), targets: (...) -> scalar fp32.
    `chunk_size` tokens at a time (None: `auto_chunk_size(V)`)."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.shape[0])
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} must agree on every dim but the last"
        )
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    targets = targets.reshape(-1).to(hidden.device)  # (N,)
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
