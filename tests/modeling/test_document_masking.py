"""Document masking: a packed row whose position_ids restart at each document behaves as its documents
run one by one, for every attention backend; and the default path ignores it.

References, independent of the code under test: each document run alone through the same model
(no mask needed there), the native transformers model fed the same packed row (transformers 5.24
detects packed rows from restarting position_ids for eager and SDPA too, `masking_utils.
find_packed_sequence_indices`, but only without a KV cache: `use_cache=False` in eval mode), and a
textbook per-head attention with an explicit block-diagonal mask.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from modeling import DecoderConfig, DecoderForCausalLM, attention, to_hf
from modeling.attention import ATTENTION_FUNCTIONS, document_ids, documents_from_position_ids
from reference_attention import reference_attention

TOL = 1e-5  # float32, same kernels: summation order only
PRESETS = ["tiny-llama", "tiny-qwen3", "tiny-gpt2"]  # GQA + RoPE, qk-norm, learned positions + MHA
ROWS = [[5, 9, 1, 17], [12, 20]]  # document lengths per packed row (32 tokens each), a 1-token document


def _packed(lengths_per_row, vocab=2048):
    ids = torch.randint(0, vocab, (len(lengths_per_row), sum(lengths_per_row[0])))
    pos = torch.stack([torch.cat([torch.arange(n) for n in lens]) for lens in lengths_per_row])
    return ids, pos


def _randomize(model):
    with torch.no_grad():  # norms start at 1, biases at 0: perturb so that a swapped one would show
        for name, p in model.named_parameters():
            if "norm" in name or ".bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _model(preset, attn):
    return _randomize(DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation=attn))).eval()


def _alone(model, ids, lengths_per_row):
    """Logits of every document run on its own (fresh positions from 0, nothing else in the row)."""
    with torch.no_grad():
        return torch.stack([torch.cat([model(input_ids=doc[None]).logits[0] for doc in row.split(lens)])
                            for row, lens in zip(ids, lengths_per_row)])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("preset", PRESETS)
def test_packed_row_equals_documents_alone_and_native(preset, attn):
    model = _model(preset, attn)
    ids, pos = _packed(ROWS)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, document_masking=True).logits
        native = to_hf(model).eval()(input_ids=ids, position_ids=pos, use_cache=False).logits
    alone = _alone(model, ids, ROWS)
    torch.testing.assert_close(packed, alone, atol=TOL, rtol=0)
    torch.testing.assert_close(packed, native, atol=TOL, rtol=0)
    # without the flag, restarting position_ids move the positions only: documents see each other
    with torch.no_grad():
        unmasked = model(input_ids=ids, position_ids=pos).logits
    assert (unmasked[0, 5:] - alone[0, 5:]).abs().max() > 1e-2


def _per_document_loss(model, ids, labels, lengths_per_row):
    """Token-weighted mean of each document's own mean loss, every document run alone."""
    total, count = 0.0, 0
    for row, lab, lens in zip(ids, labels, lengths_per_row):
        for doc, doc_lab in zip(row.split(lens), lab.split(lens)):
            n = int((doc_lab != -100).sum())
            if n:
                total += model(input_ids=doc[None], shift_labels=doc_lab[None]).loss * n
                count += n
    return total / count


@pytest.mark.parametrize("return_logits", [True, False])  # full-logits CE and the chunked loss
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_loss_is_the_token_weighted_mean_of_document_losses(preset, return_logits):
    model = _model(preset, "sdpa")
    ids, pos = _packed(ROWS)
    labels = torch.roll(ids, -1, dims=1)  # the next token, across document ends (as the loader's labels)
    labels[:, -1] = -100
    labels[0, 3] = labels[1, 20] = -100  # ignored targets weigh nothing on either side
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, shift_labels=labels, document_masking=True,
                       return_logits=return_logits).loss
        want = _per_document_loss(model, ids, labels, ROWS)
    torch.testing.assert_close(packed, want, atol=TOL, rtol=0)


def test_gradients_equal_documents_alone():
    """Training, not just inference: the packed row's gradients are the sum over its documents'."""
    model = _model("tiny-qwen3", "eager").train()
    ids, pos = _packed([[7, 25]])
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    loss = model(input_ids=ids, position_ids=pos, shift_labels=labels, document_masking=True).loss
    got = torch.autograd.grad(loss * 31, list(model.parameters()))  # summed over the 31 targets
    want_loss = sum(model(input_ids=d[None], shift_labels=lab[None]).loss * int((lab != -100).sum())
                    for d, lab in zip(ids[0].split([7, 25]), labels[0].split([7, 25])))
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


_reference = reference_attention  # tests/reference_attention.py


def test_documents_by_hand():
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 0]])  # row 1 starts inside a document
    assert document_ids(pos).tolist() == [[1, 1, 1, 2, 2], [0, 0, 1, 1, 2]]
    mask = documents_from_position_ids(pos, "sdpa").mask
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                         [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0],
                                         [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    flash = documents_from_position_ids(pos, "flash_attention_2")
    # the flattened 10 tokens: documents [0, 3), [3, 5), then row 1: [5, 7) (each row starts one), [7, 9), [9, 10)
    assert flash.cu_seqlens.tolist() == [0, 3, 5, 7, 9, 10] and flash.cu_seqlens.dtype == torch.int32
    assert flash.max_seqlen == 3 and flash.mask is None


@pytest.mark.parametrize("name", ["eager", "sdpa"])
@pytest.mark.parametrize("nkv", [4, 2, 1])
def test_backends_match_block_diagonal_reference_with_gradients(name, nkv):
    _, pos = _packed(ROWS)
    docs = documents_from_position_ids(pos, name)
    q, k, v = torch.randn(2, 32, 4, 16), torch.randn(2, 32, nkv, 16), torch.randn(2, 32, nkv, 16)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = ATTENTION_FUNCTIONS[name](q, k, v, causal=True, mask=None, dropout_p=0.0, scale=16**-0.5, documents=docs)
    doc = document_ids(pos)
    mask = (torch.ones(32, 32, dtype=torch.bool).tril() & (doc[:, :, None] == doc[:, None, :]))[:, None]
    want = _reference(q, k, v, mask)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(out)
    for g, r in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((want * w).sum(), (q, k, v))):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_default_path_is_plain_causal_and_bad_uses_are_refused():
    """Without the flag no mask is built (SDPA keeps is_causal=True and its flash kernel on CUDA);
    the flag needs position_ids, and refuses padding and a filled KV cache."""
    from transformers.cache_utils import DynamicCache

    model = _model("tiny-llama", "sdpa")
    seen = []
    real = ATTENTION_FUNCTIONS["sdpa"]

    def spy(q, k, v, **kw):
        seen.append((kw["causal"], kw["mask"] is None, kw["documents"] is None))
        return real(q, k, v, **kw)

    ids, pos = _packed(ROWS)
    ATTENTION_FUNCTIONS["sdpa"] = spy
    try:
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos)
            assert set(seen) == {(True, True, True)}
            seen.clear()
            model(input_ids=ids, position_ids=pos, document_masking=True)
            assert set(seen) == {(True, True, False)}
    finally:
        ATTENTION_FUNCTIONS["sdpa"] = real
    with pytest.raises(ValueError, match="needs position_ids"):
        model(input_ids=ids, document_masking=True)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="no attention_mask with zeros"):
        model(input_ids=ids, position_ids=pos, attention_mask=mask, document_masking=True)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :4], use_cache=True, cache=cache)
        with pytest.raises(ValueError, match="KV cache"):
            model(input_ids=ids[:, 4:], position_ids=pos[:, 4:], cache=cache, document_masking=True)
        # an all-ones mask is no mask, and a (1, T) position row serves every row of the batch
        same = model(input_ids=ids[:1].expand(2, -1), position_ids=pos[:1], attention_mask=torch.ones(2, 32),
                     document_masking=True, use_cache=False).logits
    torch.testing.assert_close(same[1], same[0], atol=0, rtol=0)


def test_no_graph_breaks_with_documents():
    """The eager/SDPA document mask is built on the device: dynamo traces the masked training forward
    as one graph (a .item() or data-dependent shape would break it)."""
    for attn in ("sdpa", "eager"):
        model = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation=attn)).train()
        ids, pos = _packed(ROWS)
        out = torch._dynamo.explain(model)(input_ids=ids, position_ids=pos, labels=ids, return_logits=False,
                                           document_masking=True)
        assert out.graph_break_count == 0, (attn, out.break_reasons)


# ----------------------------------------------------------------------------------------------
# flash_attention_2: the varlen path, through the same kind of stand-in as tests/modeling/test_attention.py
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A test-only flash_attn: flash_attn_func and flash_attn_varlen_func contracts on top of SDPA.
    varlen: q/k/v (total_tokens, H, D), sequences at cu_seqlens, each attended causally on its own."""
    calls = []

    def _sdpa(q, k, v, scale, causal):  # (S, H, D) each -> (S, H, D)
        tq, tk = q.shape[0], k.shape[0]
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq) if causal else None
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             attn_mask=mask, scale=scale, enable_gqa=True)
        return out.transpose(0, 1)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(dict(kind="dense", shape=tuple(q.shape), causal=causal))
        return torch.stack([_sdpa(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False):
        cu = cu_seqlens_q.tolist()
        assert cu == cu_seqlens_k.tolist() and cu[0] == 0 and cu[-1] == q.shape[0] and cu_seqlens_q.dtype == torch.int32
        assert max_seqlen_q == max_seqlen_k == max(b - a for a, b in zip(cu, cu[1:]))
        calls.append(dict(kind="varlen", shape=tuple(q.shape), kv_heads=k.shape[1], cu_seqlens=cu, causal=causal,
                          dtypes={q.dtype, k.dtype, v.dtype}))
        return torch.cat([_sdpa(q[a:b], k[a:b], v[a:b], softmax_scale, causal) for a, b in zip(cu, cu[1:])])

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    module.__spec__ = types.SimpleNamespace(name="flash_attn", loader=None, origin="test", submodule_search_locations=None)
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: module.__spec__ if name == "flash_attn" else None)
    monkeypatch.setattr(attention, "_cuda_available", lambda: True)
    return calls


@pytest.mark.parametrize("preset", PRESETS)
def test_flash_varlen_packed_row_equals_documents_alone(preset, fake_flash_attn):
    eager = _model(preset, "eager")
    flash = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="flash_attention_2")).eval()
    flash.load_state_dict(eager.state_dict())
    ids, pos = _packed(ROWS)
    with torch.no_grad():
        got = flash(input_ids=ids, position_ids=pos, document_masking=True).logits
    torch.testing.assert_close(got, _alone(eager, ids, ROWS), atol=TOL, rtol=0)
    varlen = [c for c in fake_flash_attn if c["kind"] == "varlen"]
    assert len(varlen) == flash.config.num_hidden_layers and not [c for c in fake_flash_attn if c["kind"] == "dense"]
    cfg = flash.config
    assert varlen[0]["cu_seqlens"] == [0, 5, 14, 15, 32, 44, 64] and varlen[0]["causal"]
    assert varlen[0]["shape"] == (64, cfg.num_attention_heads, cfg.head_dim)
    assert varlen[0]["kv_heads"] == cfg.num_key_value_heads  # GQA passed through un-repeated


def test_flash_varlen_trains_under_autocast(fake_flash_attn):
    """The trainer's call (chunked loss, bf16 autocast over fp32 weights): one half dtype into the
    kernel, gradients flow, and the loss equals the eager backend's within bf16 rounding."""
    flash = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation="flash_attention_2"))
    eager = DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama", attn_implementation="eager"))
    eager.load_state_dict(flash.state_dict())
    ids, pos = _packed(ROWS)
    losses = []
    for model in (flash, eager):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, position_ids=pos, shift_labels=ids, return_logits=False,
                         document_masking=True).loss
        loss.backward()
        losses.append(loss.detach())
    assert all(c["dtypes"] == {torch.bfloat16} for c in fake_flash_attn) and fake_flash_attn
    assert flash.model.layers[0].self_attn.qkv_proj.weight.grad.abs().sum() > 0
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=0)
