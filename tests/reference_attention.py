"""Textbook attention for tests (imported by tests; not a test module): explicit loops over batch rows
and heads, a (B, 1, Tq, Tk) may-attend mask, GQA by head grouping. Independent of every backend's code."""

import torch


def reference_attention(q, k, v, mask):
    B, Tq, nh, hd = q.shape
    group = nh // k.shape[2]
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(nh):
            s = q[b, :, h] @ k[b, :, h // group].T / hd**0.5
            s = s.masked_fill(~mask[b, 0], float("-inf"))
            out[b, :, h] = torch.softmax(s, -1) @ v[b, :, h // group]
    return out
