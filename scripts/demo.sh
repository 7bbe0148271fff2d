#!/usr/bin/env bash
# The README's main job on its embedded defaults: the whole stack end to end on CPU in a few minutes.
#   model -> data (tokenize + pack the shipped Shakespeare sample) -> train (DeepSpeed ZeRO-1, 2 CPU
#   processes under accelerate's launcher, training/launch.py) -> checkpoint + native HF export ->
#   lm-eval ARC/OBQA on the shipped fixtures -> run analysis (summary table + plots)
# Outputs: data/demo/ (token shards + manifest) and runs/demo/ (log.jsonl, checkpoints/, analysis/).
set -euo pipefail
cd "$(dirname "$0")/.."
# One thread per rank (2 ranks on 2 cores); set here, torchrun also stops printing its OMP_NUM_THREADS notice.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The demo runs on the CPU: saying so keeps DeepSpeed from warning that it found no GPU.
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
DATA=${DATA:-data/demo}
OUT=${OUT:-runs/demo}

echo "== 1. model: the demo's tiny LLaMA (GQA), parameter table and one forward pass"
python -m modeling.describe tiny-llama --set hidden_size=128 num_hidden_layers=4 intermediate_size=384 --seq-len 128 --forward

echo "== 2. data: tokenize and pack the shipped corpus with the shipped BPE tokenizer"
python -m data_prep.prepare --input tests/assets/corpus --tokenizer tests/assets/tokenizer --out "$DATA" \
    --seq-len 128 --val-fraction 0.05 --overwrite

echo "== 3. train: DeepSpeed ZeRO-1 on 2 CPU processes (training/recipes/demo_cpu.yaml); Ctrl-C checkpoints and stops"
rm -rf "$OUT"  # the demo starts fresh; real runs continue with --resume=auto instead
# `accelerate launch` with one line instead of torchrun's traceback on Ctrl-C (training/launch.py)
python -m training.launch --config_file accelerate_configs/cpu.yaml training/run.py \
    --recipe training/recipes/demo_cpu.yaml --data_dir="$DATA" --out_dir="$OUT"
echo "checkpoints: $(ls "$OUT/checkpoints" | tr '\n' ' ')"

echo "== 4. eval: lm-eval-harness ARC-Easy / ARC-Challenge / OpenBookQA on the final checkpoint (shipped fixtures)"
python -m eval.harness "$OUT" --data-dir tests/assets/eval --device cpu --compare eval/reference/qwen2.5-1.5b.json

echo "== 5. analysis: training time, tokens/s, losses, memory; plots"
python -m training.analysis "$OUT"
