"""Before/after micro-benchmarks of the modeling speed changes recorded in benchmarks/NOTES.md.

    python benchmarks/microbench.py loss   [--tokens 512] [--vocab 32000] [--hidden 256] [--dtype fp32|bf16]
                                           [--chunk N] [--memory]
    python benchmarks/microbench.py norm   [--tokens 1024] [--hidden 256]
    python benchmarks/microbench.py rope   [--tokens 1024] [--heads 8] [--head-dim 64]
    python benchmarks/microbench.py mask   [--tokens 256] [--heads 4] [--head-dim 16]

Each times forward + backward of the previous implementation ("before", copied here verbatim from
the commit it replaced) and of the current one in modeling/, interleaved, and prints min / median
milliseconds and the speed-up (min is the figure to trust on a shared machine: contention only adds
time). `--json FILE` writes the same numbers. CPU by default; `--device cuda` on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import peak_rss_growth_mib  # noqa: E402
from benchmarks.report import format_table, write_json  # noqa: E402
from benchmarks.timing import time_interleaved  # noqa: E402
from modeling.attention import eager_attention  # noqa: E402
from modeling.losses import linear_cross_entropy  # noqa: E402
from modeling.modeling_decoder import apply_rope, rms_normalize, rope_cos_sin  # noqa: E402
from training.precision import PRECISION_NAMES, torch_dtype  # noqa: E402


# ----------------------------------------------------------------------------------------------
# The "before" implementations (commit 484d1b2, modeling/modeling_decoder.py)
# ----------------------------------------------------------------------------------------------
def loss_before(h, w, t, amp_dtype):
    """lm_head(h) -> logits.float() -> cross_entropy: the full (N, V) logits, an fp32 copy, fp32 log-softmax."""
    with torch.autocast(h.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        logits = F.linear(h, w)
    return F.cross_entropy(logits.float(), t, ignore_index=-100)


def loss_after(h, w, t, amp_dtype, chunk=None):
    with torch.autocast(h.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        return linear_cross_entropy(h, w, t, chunk)


def norm_before(x, w, eps=1e-5):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


def norm_after(x, w, eps=1e-5):
    return w * rms_normalize(x, eps)


def rope_tables_before(position_ids, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_before(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def eager_before(q, k, v, scale):
    """modeling/attention.py eager_attention before commit "eager attention: grouped GQA, additive mask"
    (causal path): repeat_interleave of K/V, masked_fill with a boolean mask."""
    nh, nkv = q.shape[2], k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    tq, tk = scores.shape[-2:]
    mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).transpose(1, 2)


def mask_additive(q, k, v, scale):
    """HF's eager attention for comparison: an additive float mask (its backward is free)."""
    nh, nkv, (B, T) = q.shape[2], k.shape[2], q.shape[:2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k = k[:, :, None].expand(B, nkv, nh // nkv, T, k.shape[-1]).reshape(B, nh, T, k.shape[-1])
    v = v[:, :, None].expand(B, nkv, nh // nkv, T, v.shape[-1]).reshape(B, nh, T, v.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    causal = torch.full((T, T), torch.finfo(scores.dtype).min, device=q.device).triu(1)
    probs = torch.softmax(scores + causal, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def bench(fns: dict[str, Callable[[], torch.Tensor]], params: list[torch.Tensor], reps: int, device: str) -> dict:
    """Interleaved fwd+bwd timings of each callable (two warm-up rounds); returns {name: {min_ms, median_ms}}."""

    def zero_grads() -> None:
        for p in params:
            p.grad = None

    steps = {name: (lambda fn=fn: fn().float().sum().backward()) for name, fn in fns.items()}
    times = time_interleaved(steps, reps, device, warmup_rounds=2, setup=zero_grads)
    return {name: {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts)} for name, ts in times.items()}


def peak_rss_mib(fns: dict[str, Callable[[], torch.Tensor]], params: list[torch.Tensor]) -> dict:
    """Linux, CPU: growth of the process's peak RSS during one fwd+bwd of each callable, run one after
    another (benchmarks/memory.py peak_rss_growth_mib)."""
    out = {}
    for name, fn in fns.items():
        for p in params:
            p.grad = None
        out[name] = peak_rss_growth_mib(lambda: fn().float().sum().backward())
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python benchmarks/microbench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("loss", "norm", "rope", "mask"))
    p.add_argument("--tokens", type=int, help="batch x sequence (default per benchmark)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=PRECISION_NAMES, default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (1 is steadiest on a shared CPU)")
    p.add_argument("--chunk", type=int, help="loss: tokens per chunk (default: modeling.losses.auto_chunk_size)")
    p.add_argument("--memory", action="store_true", help="CPU/Linux: also the peak RSS growth of one fwd+bwd each")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev, dtype = args.device, torch_dtype(args.dtype)

    if args.what == "loss":
        n = args.tokens or 512
        h = torch.randn(n, args.hidden, device=dev, requires_grad=True)
        w = (0.02 * torch.randn(args.vocab, args.hidden, device=dev)).requires_grad_()
        t = torch.randint(0, args.vocab, (n,), device=dev)
        fns = {"before": lambda: loss_before(h, w, t, dtype), "after": lambda: loss_after(h, w, t, dtype, args.chunk)}
        params = [h, w]
    elif args.what == "norm":
        n = args.tokens or 1024
        x = torch.randn(n, args.hidden, device=dev, dtype=dtype, requires_grad=True)
        w = torch.ones(args.hidden, device=dev, requires_grad=True)
        fns = {"before": lambda: norm_before(x, w), "after": lambda: norm_after(x, w)}
        params = [x, w]
    elif args.what == "rope":
        n = args.tokens or 1024
        x = torch.randn(1, n, args.heads, args.head_dim, device=dev, dtype=dtype, requires_grad=True)
        pos = torch.arange(n, device=dev)[None]
        old = rope_tables_before(pos, args.head_dim, 10000.0, dtype)
        new = rope_cos_sin(pos, args.head_dim, 10000.0, dtype)
        torch.testing.assert_close(apply_rope(x, *new), rope_before(x, *old), atol=1e-5, rtol=1e-5)
        fns = {"before": lambda: rope_before(x, *old), "after": lambda: apply_rope(x, *new)}
        params = [x]
    else:  # mask: our eager attention before / now, and HF's (additive mask, expanded K/V)
        n = args.tokens or 256
        q = torch.randn(2, n // 2, args.heads, args.head_dim, device=dev, dtype=dtype, requires_grad=True)
        k = torch.randn(2, n // 2, args.kv_heads, args.head_dim, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn_like(k, requires_grad=True)
        scale = args.head_dim ** -0.5
        fns = {"before": lambda: eager_before(q, k, v, scale),
               "after": lambda: eager_attention(q, k, v, causal=True, mask=None, dropout_p=0.0, scale=scale),
               "HF eager": lambda: mask_additive(q, k, v, scale)}
        torch.testing.assert_close(fns["after"](), fns["before"](), atol=1e-5, rtol=1e-5)
        params = [q, k, v]

    memory = peak_rss_mib(dict(reversed(fns.items())), params) if args.memory else None
    res = bench(fns, params, args.reps, dev)
    names = list(res)
    base = res[names[0]]["min_ms"]
    print(f"{args.what} on {dev}, {args.dtype}, {torch.get_num_threads()} threads, {args.reps} reps (fwd + bwd)")
    print(format_table((f"{'variant':20s}", "min ms", "median ms", "speed-up (min)"),
                       [[f"{name:20s}", f"{res[name]['min_ms']:.3f}", f"{res[name]['median_ms']:.3f}",
                         f"{base / res[name]['min_ms']:.2f}x"] for name in names], markdown=True, align="lrrr",
                       padded=False))
    if memory:
        print("peak RSS growth, one fwd+bwd: " + ", ".join(f"{k} {v:,.0f} MiB" for k, v in memory.items()))
    out = {"what": args.what, "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "threads": torch.get_num_threads(), "results": res, "peak_rss_mib": memory}
    write_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
