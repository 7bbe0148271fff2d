"""The chunked LM-head loss (modeling/losses.py, `forward(..., return_logits=False)`) against the plain
logits + cross-entropy path: values and gradients in fp32 and under bf16 autocast, the ZeRO-3 fallback,
edge cases, and a training forward that torch.compile traces without graph breaks."""

import pytest
import torch
import torch.nn.functional as F

from modeling import DecoderConfig, DecoderForCausalLM
from modeling.losses import linear_cross_entropy

FP32_TOL = dict(atol=1e-6, rtol=1e-5)  # float32, same math, only the summation order differs


def _loss_and_grads(model, ids, labels, return_logits, amp=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(input_ids=ids, labels=labels, return_logits=return_logits)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-qwen3"])  # untied, tied, qk-norm
def test_chunked_loss_and_grads_equal_the_plain_path_fp32(preset):
    model = DecoderForCausalLM(DecoderConfig.from_preset(preset)).train()
    model.loss_chunk_size = 40  # 3 x 50 = 150 tokens: 3 full chunks and a ragged one of 30
    ids = torch.randint(0, 2048, (3, 50))
    labels = ids.clone()
    labels[0, :7] = -100  # ignored targets (prompt masking)
    plain, g_plain = _loss_and_grads(model, ids, labels, return_logits=True)
    chunked, g_chunked = _loss_and_grads(model, ids, labels, return_logits=False)
    assert chunked.logits is None and plain.logits.shape == (3, 50, 2048)
    torch.testing.assert_close(chunked.loss, plain.loss, **FP32_TOL)
    assert g_chunked.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], **FP32_TOL, msg=name)
    # shift_labels (what PackedTokenDataset yields) takes the same path
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(model(input_ids=ids, shift_labels=shifted, return_logits=False).loss, plain.loss, **FP32_TOL)


def test_chunked_loss_falls_back_when_the_head_weight_is_partitioned():
    """DeepSpeed ZeRO-3 leaves an empty placeholder in lm_head.weight outside lm_head's forward (its
    hooks gather the real tensor): return_logits=False must then go through lm_head, not read .weight."""
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).train()
    ids = torch.randint(0, 2048, (2, 16))
    expected = model(input_ids=ids, labels=ids).loss

    class Partitioned(torch.nn.Module):  # what ZeRO-3 looks like from outside the module's forward
        def __init__(self, full: torch.Tensor):
            super().__init__()
            self.full, self.weight = full, torch.nn.Parameter(torch.empty(0))

        def forward(self, h):
            return h @ self.full.t()

    model.lm_head = Partitioned(model.lm_head.weight.detach())
    out = model(input_ids=ids, labels=ids, return_logits=False)
    torch.testing.assert_close(out.loss, expected, **FP32_TOL)
    assert out.logits is not None  # the full path ran


def test_chunked_loss_under_bf16_autocast_stays_at_bf16_rounding():
    """Both paths run the head matmuls in bf16: measured against an fp32 reference, the chunked
    gradients are as close as the plain path's (relative norm error < 2%, bf16 has 8 mantissa bits)."""
    model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).train()
    model.loss_chunk_size = 64
    ids = torch.randint(0, 2048, (2, 48))
    ref, g_ref = _loss_and_grads(model, ids, ids, return_logits=True)
    plain, g_plain = _loss_and_grads(model, ids, ids, return_logits=True, amp=True)
    chunked, g_chunked = _loss_and_grads(model, ids, ids, return_logits=False, amp=True)
    assert chunked.loss.dtype == torch.float32
    torch.testing.assert_close(chunked.loss, plain.loss, atol=1e-3, rtol=0)
    for name in g_ref:
        err_plain = ((g_plain[name] - g_ref[name]).norm() / g_ref[name].norm()).item()
        err_chunked = ((g_chunked[name] - g_ref[name]).norm() / g_ref[name].norm()).item()
        assert err_chunked < max(0.02, 2 * err_plain), name


def test_linear_cross_entropy_edge_cases():
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    t = torch.randint(0, 30, (10,))
    # without grad (evaluation): the loss alone, still chunked
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, chunk_size=3), F.cross_entropy(h @ w.t(), t), **FP32_TOL)
    # every target ignored: NaN, as F.cross_entropy's mean over nothing
    ignored = torch.full((10,), -100)
    assert torch.isnan(linear_cross_entropy(h, w, ignored, chunk_size=4))
    assert torch.isnan(F.cross_entropy(h @ w.t(), ignored))
    # the gradient is scaled by the incoming gradient (here 3x)
    (3 * linear_cross_entropy(h, w, t, chunk_size=4)).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (3 * F.cross_entropy(h @ w.t(), t)).backward()
    torch.testing.assert_close(gh, h.grad, **FP32_TOL)
    torch.testing.assert_close(gw, w.grad, **FP32_TOL)
    # a second backward through the same graph would scale the stored gradients twice: refused
    loss = linear_cross_entropy(h, w, t, chunk_size=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(ValueError, match="must agree"):
        linear_cross_entropy(h, w, t[:5])


def test_no_graph_breaks_for_torch_compile():
    """torch.compile friendliness: dynamo traces the block and the whole training forward (chunked
    loss included) as one graph each. explain() only traces: no inductor compile, seconds on CPU."""
    from modeling.modeling_decoder import rope_cos_sin

    for preset in ("tiny-llama", "tiny-qwen3", "tiny-gpt2"):
        model = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="sdpa")).train()
        ids = torch.randint(0, 2048, (2, 32))
        x = torch.randn(2, 32, model.config.hidden_size)
        rope = None
        if model.config.position_embedding == "rope":
            rope = rope_cos_sin(torch.arange(32)[None], model.config.head_dim, model.config.rope_theta, x.dtype)
        block = torch._dynamo.explain(model.model.layers[0])(x, rope, None, None)
        full = torch._dynamo.explain(model)(input_ids=ids, labels=ids, return_logits=False)
        assert block.graph_break_count == 0, (preset, block.break_reasons)
        assert full.graph_break_count == 0, (preset, full.break_reasons)


