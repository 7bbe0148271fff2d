"""Attention backends behind one signature, and the choice between them.

Every backend takes queries, keys and values in the layout the projections produce,
    q: (B, Tq, nh, hd)   k, v: (B, Tk, nkv, hd)   with nh % nkv == 0 (GQA),
plus either `causal=True` (Tq == Tk, no padding: the fast path used in training) or an explicit
boolean `mask` (B, 1, Tq, Tk), True = may attend (padding, or a KV cache with Tq > 1), and
returns (B, Tq, nh, hd). The eager function is the reference the others are tested against.

Document masking (packed training rows whose documents must not see each other; Megatron's
`reset_attention_mask`, torchtitan's document masks, FlashAttention-2's varlen path in transformers)
arrives as `documents`, a `Documents` built once per forward by `documents_from_position_ids` in the
form the backend reads: a block-diagonal causal `mask` for eager and SDPA (made on the device, no
host sync), `cu_seqlens` / `max_seqlen` for flash_attn's varlen kernel (one host sync per forward).

Backend choice (`resolve_attn_implementation`) happens once, at model construction: an explicit
request that cannot run is an error saying why and what to install; only "auto" falls back
(flash_attention_2 -> sdpa -> eager), and it reports which backend it chose and why.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .names import ATTN_IMPLEMENTATIONS

logger = logging.getLogger(__name__)

FLASH_INSTALL_HINT = "pip install flash-attn --no-build-isolation (needs CUDA and a matching torch build)"


def _additive_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean may-attend mask -> 0 / dtype-min float bias. Adding it costs nothing in backward, unlike
    masked_fill (whose backward masks the gradient again)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


@dataclass(frozen=True)
class Documents:
    """The documents of packed rows (B, T), in the form one backend reads: causal attention within each.

    mask: (B, 1, T, T) bool, True = same document and not in the future (eager, sdpa).
    cu_seqlens: (n_docs + 1,) int32 start offsets of the documents in the flattened B*T tokens, then
        B*T (flash_attn_varlen_func); max_seqlen: the longest document's length.
    """

    mask: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    max_seqlen: int = 0


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions restarting at 0 at each document start -> (B, T) document index within the row:
    [[0, 1, 2, 0, 1, 0]] -> [[1, 1, 1, 2, 2, 3]]; tokens before a row's first 0 are document 0. Only
    equality between ids matters."""
    return (position_ids == 0).long().cumsum(-1)


def documents_from_position_ids(position_ids: torch.Tensor, attn_implementation: str) -> Documents:
    """What `attn_implementation` needs to keep each document's attention inside it.

    eager / sdpa: mask = causal & (doc_q == doc_k), (B, 1, T, T), built on the device: no host sync.
    flash_attention_2: documents are the varlen kernel's sequences (each row also ends one). Their
    offsets are a data-dependent shape, so the start flags are copied to the host once per forward (the
    one host sync of this path); cu_seqlens goes back with a non-blocking copy.
    """
    B, T = position_ids.shape
    if attn_implementation != "flash_attention_2":
        doc = document_ids(position_ids)
        causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
        return Documents(mask=(causal & (doc[:, :, None] == doc[:, None, :]))[:, None])  # (B, 1, T, T)
    starts = position_ids == 0
    starts[:, 0] = True  # every row starts a sequence: documents never continue into the next row
    starts = starts.flatten().cpu()  # host sync: one (B*T,) bool copy per forward
    cu = torch.cat([starts.nonzero().flatten(), torch.tensor([B * T])]).to(torch.int32)  # (n_docs + 1,)
    return Documents(cu_seqlens=cu.to(position_ids.device, non_blocking=True), max_seqlen=int(cu.diff().max()))


def eager_attention(q, k, v, *, causal: bool, mask: Optional[torch.Tensor], dropout_p: float, scale: float,
                    documents: Optional[Documents] = None):
    """Reference implementation: explicit softmax(QK^T * scale + bias) V with the softmax in float32.

    GQA without copying K/V: the g = nh // nkv query heads that share a KV head are stacked along the
    sequence axis, (B, nkv, g*Tq, hd), so one batched matmul per KV head serves the whole group (a
    repeat_interleave of K and V would copy them g times and scatter-add their gradients back).
    """
    if documents is not None:
        mask, causal = documents.mask, False
    B, Tq, nh, hd = q.shape
    Tk, nkv = k.shape[1], k.shape[2]
    g = nh // nkv  # query head h uses KV head h // g
    q = q.view(B, Tq, nkv, g, hd).permute(0, 2, 3, 1, 4).reshape(B, nkv, g * Tq, hd)
    scores = torch.matmul(q, k.permute(0, 2, 3, 1)).view(B, nkv, g, Tq, Tk) * scale
    if causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    if mask is not None:  # (Tq, Tk) or (B, 1, Tq, Tk) -> broadcast over (B, nkv, g, Tq, Tk)
        bias = _additive_bias(mask, scores.dtype)
        scores = scores + (bias[:, :, None] if bias.dim() == 4 else bias)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    out = torch.matmul(probs.view(B, nkv, g * Tq, Tk), v.transpose(1, 2))  # (B, nkv, g*Tq, hd)
    return out.view(B, nkv, g, Tq, hd).permute(0, 3, 1, 2, 4).reshape(B, Tq, nh, hd)


def _repeat_kv(t: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, nkv, T, hd) -> (B, nkv * n_rep, T, hd), KV head j serving query heads j*n_rep ... j*n_rep+n_rep-1."""
    B, nkv, T, hd = t.shape
    return t[:, :, None].expand(B, nkv, n_rep, T, hd).reshape(B, nkv * n_rep, T, hd)


def sdpa_attention(q, k, v, *, causal: bool, mask: Optional[torch.Tensor], dropout_p: float, scale: float,
                   documents: Optional[Documents] = None):
    """torch's scaled_dot_product_attention; on CUDA with causal=True it runs a FlashAttention-2 kernel.
    With documents it takes their block-diagonal mask (CUDA: the memory-efficient or cuDNN kernel)."""
    if documents is not None:
        mask, causal = documents.mask, False
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd), views: SDPA takes strided inputs
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1 and mask is not None:
        # SDPA's fused CUDA kernels take enable_gqa only without an explicit mask; with one it would
        # fall back to the math kernel, so repeat K/V instead (padded evaluation, generation, documents).
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )
    return out.transpose(1, 2)  # (B, Tq, nh, hd)


def flash_attention_2(q, k, v, *, causal: bool, mask: Optional[torch.Tensor], dropout_p: float, scale: float,
                      documents: Optional[Documents] = None):
    """Dao's flash_attn package: native (B, T, H, D) layout and GQA, bottom-right causal alignment; with
    documents, its varlen kernel over the flattened tokens with one sequence per document."""
    if mask is not None:
        raise ValueError(
            "attn_implementation='flash_attention_2' here runs unpadded batches only (no attention_mask with "
            "zeros, no multi-token decode over a cache); use attn_implementation='sdpa' for padded inputs"
        )
    from flash_attn import flash_attn_func  # imported lazily: an optional, GPU-only dependency

    # flash_attn is not an autocast op: under autocast (fp32 weights) q and k come out of RoPE in fp32
    # (its tables follow the fp32 residual stream) while v is bf16; its kernels take one half dtype.
    if torch.is_autocast_enabled(q.device.type):
        half = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(half), k.to(half), v.to(half)
    if documents is not None:
        from flash_attn import flash_attn_varlen_func

        B, T, nh, hd = q.shape
        cu, n = documents.cu_seqlens, documents.max_seqlen
        out = flash_attn_varlen_func(
            q.reshape(B * T, nh, hd), k.reshape(B * T, -1, hd), v.reshape(B * T, -1, hd),  # (B*T, H, hd)
            cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=n, max_seqlen_k=n,
            dropout_p=dropout_p, softmax_scale=scale, causal=True,
        )
        return out.view(B, T, nh, hd)
    return flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale, causal=causal)


ATTENTION_FUNCTIONS: dict[str, Callable] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "flash_attention_2": flash_attention_2,
}


def _cuda_available() -> bool:
    return torch.cuda.is_available()


HALF_DTYPES = (torch.float16, torch.bfloat16)


def flash_attn_unavailable_reason(compute_dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """None when flash_attention_2 can run here (for a run computing in `compute_dtype`, if given), else why not.
    The device comes first: on a machine without CUDA, installing flash_attn would not help."""
    if not _cuda_available():
        return "no CUDA device: flash_attn kernels run only on NVIDIA GPUs"
    if importlib.util.find_spec("flash_attn") is None:
        return f"the flash_attn package is not installed ({FLASH_INSTALL_HINT})"
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # a broken build (ABI mismatch with torch) is common; report it, don't crash
        return f"flash_attn is installed but fails to import ({exc}); reinstall: {FLASH_INSTALL_HINT}"
    if compute_dtype is not None and compute_dtype not in HALF_DTYPES:
        return f"this run computes in {compute_dtype} and flash_attn kernels take fp16/bf16 only (train in bf16)"
    return None


def _short_reason(why_not_flash: str) -> str:
    """auto's one-line answer for the console and the run log (the explicit-request error keeps the detail)."""
    if why_not_flash.startswith("no CUDA device"):
        return "flash_attention_2 needs a CUDA GPU"
    if "not installed" in why_not_flash:
        return "flash_attn not installed; SDPA's CUDA flash kernel is FlashAttention-2 as well"
    if why_not_flash.startswith("this run computes in"):
        return "flash_attention_2 takes fp16/bf16 only; this run computes in fp32"
    return why_not_flash


def resolve_attn_implementation(requested: Optional[str], compute_dtype: Optional[torch.dtype] = None) -> tuple[str, str]:
    """Map a requested backend ("auto"/None or a name) to the one that will run, with the reason.

    compute_dtype: the dtype attention will see (bf16 under autocast or DeepSpeed bf16), when the caller
    knows it; flash_attn kernels take fp16/bf16 only, so "auto" skips them for an fp32 run.
    """
    requested = requested or "auto"
    if requested == "auto":
        why_not_flash = flash_attn_unavailable_reason(compute_dtype)
        if why_not_flash is None:
            return "flash_attention_2", "auto: flash_attn is installed and CUDA is available"
        return "sdpa", _short_reason(why_not_flash)
    if requested == "flash_attention_2":
        why_not = flash_attn_unavailable_reason(compute_dtype)
        if why_not is not None:
            raise ImportError(
                f"attn_implementation='flash_attention_2' was requested but cannot run: {why_not}. "
                "Install it on a GPU machine, or request 'sdpa' / 'auto' instead."
            )
        return requested, "requested explicitly"
    if requested in ATTN_IMPLEMENTATIONS:  # eager, sdpa: always available
        return requested, "requested explicitly"
    raise ValueError(f"unknown attn_implementation {requested!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
