"""The GPU check's correctness checks (benchmarks/gpu_check.py runs them, then the step benchmark), each
in the run's dtype on its device, each case a row: pass / fail / unavailable, with the numbers.

* parity: ours vs the native transformers model (same weights), judged against an fp32 reference.
* sdpa-kernels: our SDPA attention on each of torch's kernels at each benchmarked preset's shape.
* document-masking: a packed row with document masking equals its documents run alone, with the host
  syncs of one masked forward + backward.
"""

from __future__ import annotations

import contextlib
import statistics
import warnings
from typing import Any, Callable

import torch

from modeling import DecoderConfig, DecoderForCausalLM, to_hf
from modeling.names import ATTN_IMPLEMENTATIONS
from modeling.attention import (
    ATTENTION_FUNCTIONS, documents_from_position_ids, eager_attention, flash_attn_unavailable_reason,
)
from training.precision import torch_dtype

from .timing import count_host_syncs, time_calls

TINY = ("tiny-llama", "tiny-qwen3", "tiny-gpt2")
FLOOR = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 2e-3}  # absolute slack on top of 2x native's error


def check_row(check: str, name: str, status: str, **info) -> dict[str, Any]:
    return {"check": check, "name": name, "status": status, **info}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _backends(dtype: torch.dtype) -> list[str]:
    """Every named backend (modeling/names.py) this device runs at `dtype`."""
    return [name for name in ATTN_IMPLEMENTATIONS if name != "auto"
            and (name != "flash_attention_2" or not flash_attn_unavailable_reason(dtype))]


def _cast(model, device, dtype):
    return model.to(device=device, dtype=dtype).eval()


def parity_checks(device: torch.device, dtype_name: str) -> list[dict]:
    """Ours vs native in the run's dtype, each measured against an fp32 reference of ours."""
    dtype, rows = torch_dtype(dtype_name), []
    for preset in TINY:
        for attn in _backends(dtype):
            name = f"{preset}/{attn}"
            try:
                torch.manual_seed(0)
                src = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager")).eval()
                with torch.no_grad():  # perturb norms and biases: a swapped one must show
                    for n, p in src.named_parameters():
                        if "norm" in n or ".bias" in n:
                            p.add_(0.1 * torch.randn_like(p))
                ids = torch.randint(0, src.config.vocab_size, (2, 64)).to(device)
                with torch.no_grad():
                    ref = _cast(src, device, torch.float32)(input_ids=ids, labels=ids)
                ours = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager"))
                ours.load_state_dict(src.state_dict())
                ours.config._attn_implementation = attn  # read at every forward (as benchmarks.step)
                native = to_hf(ours.cpu())
                ours, native = _cast(ours, device, dtype), _cast(native, device, dtype)
                if attn == "flash_attention_2":
                    native.set_attn_implementation("flash_attention_2")
                with torch.no_grad():
                    a = ours(input_ids=ids, labels=ids)
                    b = native(input_ids=ids, labels=ids, use_cache=False)
                err_ours, err_native = _max_diff(a.logits, ref.logits), _max_diff(b.logits, ref.logits)
                bound = 2 * err_native + FLOOR[dtype_name]
                loss_diff = abs(float(a.loss) - float(b.loss))
                loss_bound = 2 * abs(float(b.loss) - float(ref.loss)) + FLOOR[dtype_name]
                ok = err_ours <= bound and loss_diff <= loss_bound
                rows.append(check_row("parity", name, "pass" if ok else "fail", native_class=type(native).__name__,
                                 ours_vs_fp32=err_ours, native_vs_fp32=err_native, bound=bound,
                                 ours_vs_native=_max_diff(a.logits, b.logits), loss_diff=loss_diff,
                                 loss_bound=loss_bound))
            except Exception as exc:  # noqa: BLE001 - a row per failure; the run goes on
                rows.append(check_row("parity", name, "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
    return rows


def _sdpa_kernels(device: torch.device):
    """torch's default SDPA dispatch, then on CUDA each kernel forced alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"default": contextlib.nullcontext}
    if device.type == "cuda":
        forced = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
                  "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        kernels.update({k: (lambda b=b: sdpa_kernel([b])) for k, b in forced.items() if b is not None})
    return kernels


def _sdpa_ops(prof) -> list[str]:
    """The aten SDPA ops a profiled step ran: which kernel the default dispatch picked
    (_scaled_dot_product_flash_attention, _efficient_attention, _cudnn_attention, or the math ops)."""
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "scaled_dot_product" in n or "attention" in n.lower() and n.startswith("aten::"))


def sdpa_kernel_checks(device: torch.device, dtype_name: str, presets: list[str], seq_len: int) -> list[dict]:
    """Our SDPA attention on each kernel at each preset's attention shape: causal (the training fast
    path) and with a document mask (document_masking=True), forward + backward vs fp32 eager. Bound:
    2x the error of eager attention in the same dtype (the reference implementation) + a floor."""
    dtype, rows = torch_dtype(dtype_name), []
    for preset in presets:
        cfg = DecoderConfig.from_preset(preset)
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, seq_len, h, hd, generator=g).to(device) for h in (nh, nkv, nkv))
        w = torch.randn(1, seq_len, nh, hd, generator=g).to(device)
        pos = torch.cat([torch.arange(n) for n in _doc_lengths(seq_len)])[None].to(device)
        for masking in (False, True):
            docs = documents_from_position_ids(pos, "sdpa") if masking else None
            ref_in = [t.float().requires_grad_() for t in (q, k, v)]
            ref = eager_attention(*ref_in, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs)
            ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
            low_in = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            low = eager_attention(*low_in, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs)
            low_err = _max_diff(low, ref)
            low_gerr = _grad_rel_err(torch.autograd.grad((low.float() * w).sum(), low_in), ref_grads)
            tol, gtol = 2 * low_err + FLOOR[dtype_name], 2 * low_gerr + FLOOR[dtype_name]
            for kernel, ctx in _sdpa_kernels(device).items():
                name = f"{preset} (nh={nh}, nkv={nkv}, hd={hd}, T={seq_len}){' documents' if masking else ' causal'}/{kernel}"
                inp = [t.to(dtype).requires_grad_() for t in (q, k, v)]
                with warnings.catch_warnings(record=True) as why:  # torch warns why a kernel was not used
                    warnings.simplefilter("always")
                    try:
                        with ctx(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                            out = ATTENTION_FUNCTIONS["sdpa"](*inp, causal=True, mask=None, dropout_p=0.0,
                                                              scale=hd**-0.5, documents=docs)
                            grads = torch.autograd.grad((out.float() * w).sum(), inp)
                    except RuntimeError as exc:  # this kernel does not take this shape / mask / GQA here
                        reasons = "; ".join(dict.fromkeys(str(x.message).splitlines()[0] for x in why))
                        rows.append(check_row("sdpa-kernels", name, "unavailable",
                                         reason=(reasons or str(exc).splitlines()[0])[:400]))
                        continue
                timing = {}
                if kernel == "default":  # what masking costs the attention core: causal vs documents
                    timing["fwd_bwd_ms"] = _median_ms(device, lambda: torch.autograd.grad((ATTENTION_FUNCTIONS["sdpa"](
                        *inp, causal=True, mask=None, dropout_p=0.0, scale=hd**-0.5, documents=docs).float() * w).sum(), inp))
                err, gerr = _max_diff(out, ref), _grad_rel_err(grads, ref_grads)
                rows.append(check_row("sdpa-kernels", name, "pass" if err <= tol and gerr <= gtol else "fail",
                                 out_vs_fp32=err, bound=tol, grad_rel_vs_fp32=gerr, grad_bound=gtol,
                                 ops=", ".join(_sdpa_ops(prof)), **timing))
    return rows


def _grad_rel_err(grads, ref_grads) -> float:
    """Largest |g - ref| over q, k, v, each relative to its reference's largest entry."""
    return max(_max_diff(a, b) / (float(b.abs().max()) + 1e-6) for a, b in zip(grads, ref_grads))


def _median_ms(device: torch.device, fn: Callable[[], Any], reps: int = 5) -> float:
    """Median milliseconds of fn after one warm-up call (CUDA events on a GPU)."""
    return statistics.median(time_calls(fn, reps, device, warmup=1)) * 1e3


def _doc_lengths(T: int) -> list[int]:
    """A packed row of T tokens: a long document, short ones, a 1-token one, the rest."""
    lengths = [T // 2, T // 8, 1, T // 16]
    return lengths + [T - sum(lengths)]


def document_checks(device: torch.device, dtype_name: str) -> list[dict]:
    """Packed row with document_masking == its documents alone, per backend, in the run's dtype
    (bound: 2x the error of running the documents alone in that dtype vs fp32, + floor)."""
    dtype, rows = torch_dtype(dtype_name), []
    lengths = [[20, 7, 1, 36], [40, 24]]
    for preset in ("tiny-llama", "tiny-gpt2"):
        for attn in _backends(dtype):
            name = f"{preset}/{attn}"
            try:
                torch.manual_seed(0)
                src = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager")).eval()
                fp32 = DecoderForCausalLM(DecoderConfig.from_preset(preset, attn_implementation="eager"))
                fp32.load_state_dict(src.state_dict())
                cfg = src.config
                ids = torch.randint(0, cfg.vocab_size, (2, 64)).to(device)
                pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths]).to(device)
                model = _cast(src, device, dtype)
                model.config._attn_implementation = attn

                def alone(m):
                    with torch.no_grad():
                        return torch.stack([torch.cat([m(input_ids=d[None]).logits[0] for d in row.split(ls)])
                                            for row, ls in zip(ids, lengths)])

                with torch.no_grad():
                    packed = model(input_ids=ids, position_ids=pos, document_masking=True, use_cache=False).logits
                by_doc = alone(model)
                reference = alone(_cast(fp32, device, torch.float32))
                bound = 2 * _max_diff(by_doc, reference) + FLOOR[dtype_name]
                err = _max_diff(packed, reference)
                model.train()

                def step():
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        model(input_ids=ids, position_ids=pos, labels=ids, return_logits=False,
                              document_masking=True).loss.backward()

                step()  # warm-up: first-call work (library handles, allocator growth) is not the step's
                syncs = count_host_syncs(step, device)
                # CUDA: the mask is built on the device (0 syncs); flash's varlen offsets cost one
                syncs_ok = syncs is None or syncs <= (1 if attn == "flash_attention_2" else 0)
                rows.append(check_row("document-masking", name, "pass" if err <= bound and syncs_ok else "fail",
                                 packed_vs_fp32=err, bound=bound, host_syncs_fwd_bwd=syncs))
            except Exception as exc:  # noqa: BLE001
                rows.append(check_row("document-masking", name, "fail", error=f"{type(exc).__name__}: {exc}"[:400]))
    return rows
