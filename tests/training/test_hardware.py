"""training.hardware: GPU names, dense peak table, MFU arithmetic, device detection."""

import types

import pytest
import torch

from modeling import mfu
from training.hardware import (
    GPU_MEMORY_GB, PEAK_FLOPS, canonical_dtype, canonical_gpu_name, detect_device, parse_gpu_setup, peak_flops,
)


@pytest.mark.parametrize("reported, canonical", [
    # what torch.cuda.get_device_name() returns on these machines
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200 NVL"),  # the PCIe card: 835.5 dense BF16 TF/s, not the SXM's 989.4
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA RTX A6000", "A6000"),
    ("NVIDIA L40S", "L40S"),
    ("Tesla V100-SXM2-32GB", "V100"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"),
    # what people type
    ("h100", "H100 SXM"), ("H100-SXM", "H100 SXM"), ("h100_pcie", "H100 PCIe"), ("a6000", "A6000"),
    ("b200", "B200"), ("4090", "RTX 4090"), ("A100", "A100"), ("H100 SXM", "H100 SXM"),
])
def test_canonical_names(reported, canonical):
    assert canonical_gpu_name(reported) == canonical


@pytest.mark.parametrize("other", [
    "NVIDIA RTX 6000 Ada Generation",  # not an RTX A6000
    "NVIDIA GB200",  # a different B200 (1200 W)
    "NVIDIA GeForce RTX 3090 Ti",
    "NVIDIA A10",
    "Radeon Instinct MI300X",
])
def test_unknown_gpu_lists_the_known_ones(other):
    with pytest.raises(ValueError) as exc:
        canonical_gpu_name(other)
    message = str(exc.value)
    assert repr(other) in message
    for known in ("H100 SXM", "A6000", "B200", "RTX 4090"):
        assert known in message


def test_dense_peaks_from_datasheets():
    # dense = half the "with sparsity" datasheet figure
    assert peak_flops("H100 SXM", "bf16") == 989.4e12  # 1979 TFLOPS* / 2
    assert peak_flops("A100", "bf16") == 312e12  # 624* / 2
    assert peak_flops("A6000", "bf16") == pytest.approx(309.7e12 / 2, rel=1e-3)  # 309.7 TFLOPS is with sparsity
    assert peak_flops("B200", "bf16") == 2.25e15  # HGX B200: 36 PFLOPS* for 8 GPUs -> 4.5* per GPU -> 2.25 dense
    assert PEAK_FLOPS["H200"] == PEAK_FLOPS["H100 SXM"]  # same GH100 compute
    assert peak_flops("NVIDIA H200 NVL", "bf16") == pytest.approx(1671e12 / 2, rel=1e-3)  # the PCIe card
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert peak_flops("A100", "tf32") == 156e12 and peak_flops("A100", "fp32") == 19.5e12


def test_no_peak_for_cpu_or_missing_dtype():
    assert peak_flops("cpu", "bf16") is None
    assert peak_flops(None, "bf16") is None
    assert peak_flops("V100", "bf16") is None  # Volta has no bf16 tensor cores
    assert peak_flops("A100", "fp8") is None  # Ampere has no fp8
    with pytest.raises(ValueError, match="known GPUs"):
        peak_flops("H10", "bf16")
    with pytest.raises(ValueError, match="unknown dtype"):
        peak_flops("H100", "int4")


def test_tables_are_consistent():
    assert set(PEAK_FLOPS) == set(GPU_MEMORY_GB)
    for gpu, peaks in PEAK_FLOPS.items():
        if "bf16" in peaks:
            assert peaks["bf16"] > peaks["fp32"], gpu  # tensor cores beat CUDA cores
            # fp8 runs at twice the bf16 rate (the L40S datasheet's own figures, 362.05 and 733, are 1.2% off that)
            assert peaks.get("fp8", 2 * peaks["bf16"]) == pytest.approx(2 * peaks["bf16"], rel=0.02), gpu
    assert GPU_MEMORY_GB["A6000"] == 48 and GPU_MEMORY_GB["H200"] == 141 and GPU_MEMORY_GB["B200"] == 180


def test_mfu_against_hand_values():
    # 10,000 tokens/s per GPU x 6e9 FLOPs/token = 6e13 FLOP/s; / 989.4e12 = 0.060643
    assert mfu(10_000, 6e9, peak_flops("h100", "bf16")) == pytest.approx(0.060643, abs=1e-6)
    # 4,000 tokens/s x 1e10 = 4e13; / 154.8e12 = 0.258398 on an A6000
    assert mfu(4_000, 1e10, peak_flops("NVIDIA RTX A6000", "bf16")) == pytest.approx(0.258398, abs=1e-6)
    # 30,000 tokens/s x 1.032e10 = 3.096e14; / 2.25e15 = 0.1376 on a B200
    assert mfu(30_000, 1.032e10, peak_flops("B200", "bf16")) == pytest.approx(0.1376, abs=1e-6)
    assert mfu(4_000, 1e10, peak_flops("cpu", "bf16")) is None


def test_dtype_and_setup_parsing():
    assert canonical_dtype("torch.bfloat16") == "bf16" and canonical_dtype("float32") == "fp32"
    assert parse_gpu_setup("8xB200") == (8, "B200")
    assert parse_gpu_setup("2x a6000") == (2, "A6000")
    assert parse_gpu_setup("H100") == (1, "H100 SXM")
    with pytest.raises(ValueError, match="known GPUs"):
        parse_gpu_setup("4xT4")


def test_detect_device_on_this_machine():
    info = detect_device()
    if not torch.cuda.is_available():
        assert info == {"device": "cpu", "name": "cpu", "canonical": None, "count": 0, "memory_gb": None}
    assert peak_flops(info["canonical"], "bf16") is None or info["device"] == "cuda"


@pytest.mark.parametrize("name, canonical", [("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA A40", None)])
def test_detect_device_with_a_simulated_gpu(monkeypatch, name, canonical):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(total_memory=80 * 2**30))
    info = detect_device()
    assert info == {"device": "cuda", "name": name, "canonical": canonical, "count": 8, "memory_gb": 80.0}
    # an unknown GPU gives no peak (MFU null) instead of crashing the trainer
    assert (peak_flops(info["canonical"], "bf16") is None) == (canonical is None)


def test_fp32_runs_are_measured_against_the_peak_their_matmuls_reach():
    """TF32 tensor cores when torch allows them, CUDA cores otherwise; half precisions are themselves."""
    from training.hardware import matmul_dtype

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert matmul_dtype("fp32") == "fp32" and matmul_dtype("no") == "fp32"
        torch.set_float32_matmul_precision("high")
        assert matmul_dtype("fp32") == "tf32" and matmul_dtype("bf16") == "bf16" and matmul_dtype("fp16") == "fp16"
    finally:
        torch.set_float32_matmul_precision(before)
