#!/usr/bin/env bash
# The GPU run, prepared: device checks (parity, SDPA kernels, document masking) + the training-step
# benchmark for llama3-1.5b and qwen3-1.8b (bf16, SDPA, compile, chunked loss), in <= 8 minutes.
#
#   bash benchmarks/gpu_check.sh                  # CUDA: writes benchmarks/results/<gpu>-<date>-check.{json,md}
#   bash benchmarks/gpu_check.sh --cpu --out DIR  # CPU, tiny presets (CI)
#   bash benchmarks/gpu_check.sh --help           # every option; PYTHON=... picks the interpreter
#
# Needs torch, transformers and accelerate only (no DeepSpeed, flash-attn, datasets, lm-eval, network);
# flash_attention_2 is checked too when flash_attn imports. Exit status 1 when a check failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"  # largest micro-batch, less fragmentation
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
