"""Peak FLOP/s and memory per GPU model, GPU name resolution, and what this machine has.

Every figure is a DENSE peak (no 2:4 structured sparsity) per GPU, from the vendor datasheet or
architecture whitepaper; NVIDIA's headline tensor numbers are "with sparsity" (marked * in their
tables) and are exactly twice the dense ones, so each dense figure below is half the starred one.
MFU (docs/flops_and_mfu.md) divides achieved FLOP/s per GPU by these numbers.

dtype keys: "bf16" / "fp16" (tensor cores, FP32 accumulate: what PyTorch matmuls use), "tf32"
(tensor cores on fp32 tensors, when torch.backends.cuda.matmul.allow_tf32 is on), "fp32" (CUDA
cores, no tensor cores), "fp8" (Hopper/Ada/Blackwell tensor cores, FP32 accumulate). A dtype a
GPU cannot run on tensor cores (bf16 on a V100) is absent: `peak_flops` returns None for it.

Sources (datasheets as published by NVIDIA):
  B200   HGX B200 datasheet (Blackwell, 8 GPUs): FP8 72 PF*, FP16/BF16 36 PF*, TF32 18 PF*, FP32
         600 TF -> per GPU dense FP8 4.5 PF, BF16 2.25 PF, TF32 1.125 PF, FP32 75 TF. These are the
         HGX B200 (1000 W) figures; a DGX/HGX B200 and a GB200 NVL72 B200 (1200 W, BF16 2.5 PF dense)
         differ: we use the HGX B200 ones.
  H100   H100 datasheet / Hopper whitepaper table 3: SXM5 BF16/FP16 1979 TF* -> 989.4 dense, TF32
         494.7, FP8 1978.9, FP32 66.9 (datasheet: 67). PCIe: BF16/FP16 1513 TF* -> 756.5, TF32 378,
         FP8 1513, FP32 51.2 (datasheet: 51).
  H200   H200 datasheet: same GH100 compute as the H100 SXM (BF16 1979 TF*, FP8 3958 TF*, FP32 67),
         more and faster memory (141 GB HBM3e).
  H100 NVL / H200 NVL  the PCIe NVL cards (lower power): BF16/FP16 1671 TF* -> 835.5 dense, FP8
         3341 TF* -> 1670.5, TF32 835 TF* -> 417.5, FP32 60; 94 GB (H100 NVL) / 141 GB (H200 NVL).
  A100   A100 datasheet (SXM4 and PCIe, 40 and 80 GB alike): BF16/FP16 312 TF (624*), TF32 156,
         FP32 19.5. No FP8.
  A6000  RTX A6000 datasheet + GA102 whitepaper appendix: "Tensor performance 309.7 TF" is FP16 WITH
         sparsity; dense FP16/BF16 with FP32 accumulate 154.8 TF (full rate on the pro card), TF32
         77.4, FP32 38.7.
  L40S   L40S datasheet: BF16/FP16 362.05 dense (733* sparse, as printed), FP8 733 (1466*), TF32 183
         (366*), FP32 91.6.
  V100   V100 SXM2 datasheet: tensor FP16 125 TF, FP32 15.7 (the PCIe card: 112 / 14). No BF16/TF32.
  RTX 4090  Ada whitepaper appendix: FP16/BF16 with FP32 accumulate 165.2 TF dense (GeForce cards run
         FP32-accumulate at half the FP16-accumulate rate of 330.3), FP8 (FP32 acc.) 330.3, TF32 82.6,
         FP32 82.6.
  RTX 3090  GA102 whitepaper appendix: FP16/BF16 with FP32 accumulate 71 TF dense (half rate on
         GeForce), TF32 35.6, FP32 35.6.
"""

from __future__ import annotations

import re

from .precision import PRECISIONS

PEAK_FLOPS: dict[str, dict[str, float]] = {
    "B200": {"bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15, "tf32": 1.125e15, "fp32": 75e12},
    "H200 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "fp8": 1670.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "H100 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "fp8": 1670.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 SXM": {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "fp8": 1513e12, "tf32": 378e12, "fp32": 51.2e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "A6000": {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12, "fp32": 38.7e12},
    "L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "fp8": 733e12, "tf32": 183e12, "fp32": 91.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp8": 330.3e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
}

# Memory per GPU in the vendor's GB. HBM/GDDR capacities are binary, so "80 GB" is 80 GiB of DRAM
# of which CUDA shows ~1% less (ECC/reserved): the planner treats these as GiB and its safety
# margin absorbs the difference. Variants with the same compute but less memory are noted.
GPU_MEMORY_GB: dict[str, float] = {
    "B200": 180.0,  # HGX/DGX B200: 180 GB HBM3e per GPU (the B200 package holds 192 GB; 180 usable)
    "H200": 141.0,  # H200 SXM: 141 GB HBM3e
    "H200 NVL": 141.0,
    "H100 NVL": 94.0,
    "H100 SXM": 80.0,  # 80 GB HBM3
    "H100 PCIe": 80.0,  # 80 GB HBM2e
    "A100": 80.0,  # the 40 GB A100 has the same peak FLOPs: pass --gpu-memory-gb 40 to the planner
    "A6000": 48.0,  # 48 GB GDDR6 with ECC
    "L40S": 48.0,
    "V100": 32.0,  # also sold with 16 GB
    "RTX 4090": 24.0,
    "RTX 3090": 24.0,
}

# Every spelling of a peak-table column: the precision table's names, torch's dtype names (with and
# without "torch."), accelerate's mixed_precision values and Lightning's; plus tf32 and fp8, which are
# peak columns but not precisions a run is configured in.
DTYPE_ALIASES: dict[str, str] = {
    **{alias: p.name for p in PRECISIONS.values()
       for alias in (p.name, p.torch_dtype, f"torch.{p.torch_dtype}", p.accelerate)},
    "half": "fp16", "float": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16", "32": "fp32",
    "tf32": "tf32", "fp8": "fp8", "float8": "fp8",
}

# (pattern on the lower-cased name with spaces, dashes and underscores removed, canonical name),
# tried in order. Names torch reports ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
# "NVIDIA RTX A6000", "NVIDIA GeForce RTX 4090") and what people type ("h100", "a6000", "4090").
_NAME_PATTERNS: list[tuple[str, str]] = [
    (r"(?<!g)b200", "B200"),  # not a GB200 superchip's B200 (1200 W, different peak)
    (r"h200.*nvl", "H200 NVL"),  # the PCIe card: lower clocks and power than the SXM module
    (r"(?<!g)h200", "H200"),  # not a GH200 (96/144 GB, H100 compute)
    (r"h100.*nvl", "H100 NVL"),
    (r"h100.*pcie|h100pcie", "H100 PCIe"),
    (r"h100(?!.*nvl)", "H100 SXM"),  # "H100 80GB HBM3", "H100 SXM5 80GB", "h100"; the NVL card differs
    (r"a100", "A100"),
    (r"(rtx)?a6000", "A6000"),  # not the "RTX 6000 Ada Generation", which has no "a6000" in it
    (r"l40s", "L40S"),
    (r"v100", "V100"),
    (r"(rtx)?4090(?!d)", "RTX 4090"),
    (r"(rtx)?3090(?!ti)", "RTX 3090"),
]


def known_gpus() -> list[str]:
    return list(PEAK_FLOPS)


def canonical_gpu_name(name: str) -> str:
    """Map a torch device name or a user spelling to a `PEAK_FLOPS` key; unknown -> ValueError."""
    if name in PEAK_FLOPS:
        return name
    squashed = re.sub(r"[\s\-_]+", "", name.lower())
    squashed = squashed.removeprefix("nvidia").removeprefix("geforce")
    for pattern, canonical in _NAME_PATTERNS:
        if re.search(pattern, squashed):
            return canonical
    raise ValueError(
        f"unknown GPU {name!r}; known GPUs: {', '.join(known_gpus())} (spelled as torch reports them, "
        "e.g. 'NVIDIA H100 80GB HBM3', or short, e.g. 'h100'). For another GPU pass its dense peak "
        "explicitly, or add it to training/hardware.py with its datasheet source."
    )


def canonical_dtype(dtype: str) -> str:
    """'bfloat16', 'torch.bfloat16', 'bf16' -> 'bf16' etc.; unknown -> ValueError."""
    key = str(dtype).lower()
    if key not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32, tf32, fp8")
    return DTYPE_ALIASES[key]


def peak_flops(gpu: str | None, dtype: str) -> float | None:
    """Dense peak FLOP/s of one GPU for `dtype`.

    None when there is no GPU (`gpu` None or "cpu": a CPU has no meaningful table entry, so MFU is
    reported as null) or when that GPU has no tensor-core path for the dtype (bf16 on a V100).
    An unknown GPU name raises (listing the known ones): for the device this process runs on, pass
    `detect_device()["canonical"]`, which is already None for GPUs missing from the table."""
    if gpu is None or str(gpu).lower() == "cpu":
        return None
    return PEAK_FLOPS[canonical_gpu_name(gpu)].get(canonical_dtype(dtype))


def matmul_dtype(precision: str) -> str:
    """The peak-table column a run's matmuls reach: an fp32 run multiplies on TF32 tensor cores when
    torch allows it (torch.set_float32_matmul_precision("high"/"medium")), else on CUDA cores. Training's
    MFU and the benchmarks' both read it, so one run gets one MFU."""
    dtype = canonical_dtype(precision)
    if dtype == "fp32":
        import torch

        if torch.get_float32_matmul_precision() != "highest":
            return "tf32"
    return dtype


def gpu_memory_gb(gpu: str) -> float:
    return GPU_MEMORY_GB[canonical_gpu_name(gpu)]


def parse_gpu_setup(text: str) -> tuple[int, str]:
    """'8xB200' / '2x a6000' / 'H100' -> (count, canonical name)."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*[x×*]\s*)?(.+?)\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse GPU setup {text!r}; write COUNTxGPU, e.g. 8xB200 or 2xA6000")
    count = int(m.group(1) or 1)
    if count < 1:
        raise ValueError(f"GPU count must be >= 1 in {text!r}")
    return count, canonical_gpu_name(m.group(2))


def detect_device() -> dict:
    """What this process would train on: {"device", "name", "canonical", "count", "memory_gb"}.

    "canonical" is the `PEAK_FLOPS` key or None (CPU, or a GPU missing from the table) and
    "memory_gb" the first GPU's total memory in GiB as CUDA reports it (None on CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "name": "cpu", "canonical": None, "count": 0, "memory_gb": None}
    name = torch.cuda.get_device_name(0)
    try:
        canonical: str | None = canonical_gpu_name(name)
    except ValueError:
        canonical = None
    return {
        "device": "cuda",
        "name": name,
        "canonical": canonical,
        "count": torch.cuda.device_count(),
        "memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30,
    }
