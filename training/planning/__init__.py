"""Plan a pre-training run before renting GPUs: scaling laws, memory, batch size, wall-clock.

    python -m training.planning chinchilla --preset qwen3-1.8b --tokens 36B --tokens-per-iter 720896
    python -m training.planning optimal --flops 1.36e21 [--min-tokens-per-param 20]
    python -m training.planning memory --preset qwen3-1.8b --micro-batch 22 --seq-len 2048 --strategy zero1 --world-size 8
    python -m training.planning batch --gpu B200 --num-gpus 8 --preset qwen3-1.8b --seq-len 2048 --global-batch-sequences 352
    python -m training.planning time --preset qwen3-1.8b --tokens 36B --setup 2xA6000 --setup 8xB200 --mfu 0.4

Every subcommand prints a table and takes `--json FILE` ('-': JSON on stdout only). Each has a
function returning a dict (`chinchilla`, `optimal`, `estimate_memory`, `plan_batch`,
`estimate_time`); the CLI only formats.

Conventions (stated once, used everywhere below):
- N in the Chinchilla formulas is the TOTAL parameter count (embeddings and LM head included), as
  Hoffmann et al. 2022 count it (Kaplan et al. 2020 used non-embedding parameters; Pearce & Song
  2024, "Reconciling Kaplan and Chinchilla scaling laws", trace most of the two papers' disagreement
  to that difference). The non-embedding count is shown next to it for reference.
- Predicted loss is Hoffmann et al.'s approach-3 fit L(N, D) = E + A/N^alpha + B/D^beta with
  E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28 (their section 3.3). It is a fit to MassiveText
  with their tokenizer: compare architectures and budgets with it, do not expect your loss values.
- Compute: the closed form uses C = 6*N*D (Kaplan's approximation, as Hoffmann's closed form does);
  the architecture grid uses this repo's FLOPs per token (modeling.flops_per_token: 6*N_matmul +
  12*L*H*S, PaLM appendix B; docs/flops_and_mfu.md), so D = C / flops_per_token(config, seq_len).
- Memory is in GiB (2^30 bytes); the vendor's "80 GB" is taken as 80 GiB (see training/hardware.py).
"""

# One module per job; --help prints the docstring above (cli.py reads it from here).
#   scaling.py  Chinchilla loss, the D = 20N check, compute-optimal N and D (closed form + architecture grid)
#   memory.py   per-GPU memory: model states per strategy, activations per layer and token, overhead
#   batch.py    largest micro-batch that fits + accumulation for a global batch
#   timing.py   wall-clock from tokens, FLOPs per token, peak FLOP/s and MFU
#   cli.py      argparse, tables, --json (`python -m training.planning` runs cli.main via __main__.py)
from .scaling import (
    CHINCHILLA_FIT, COMPLIANT_BAND, FAMILIES, GRID_ASPECT, GRID_HEAD_DIM, GRID_HIDDEN, GRID_LAYERS, N_DEFINITION,
    SEED_RESULTS_1_36E21, TOKENS_PER_PARAM, architecture_grid, chinchilla, chinchilla_loss, chinchilla_status,
    closed_form_optimum, family_config, optimal,
)
from .memory import (
    ATTENTION_BACKENDS, CUDA_CONTEXT_GIB, DS_MAX_LIVE_PARAMETERS, DS_REDUCE_BUCKET, FRAGMENTATION, GIB,
    STRATEGIES, STRATEGY_HELP, activation_memory, estimate_memory,
)
from .batch import SAFETY_MARGIN, plan_batch
from .timing import DEFAULT_SETUPS, estimate_time
from .cli import ARCH_HEADERS, main

__all__ = [
    # scaling
    "CHINCHILLA_FIT", "COMPLIANT_BAND", "FAMILIES", "GRID_ASPECT", "GRID_HEAD_DIM", "GRID_HIDDEN", "GRID_LAYERS",
    "N_DEFINITION", "SEED_RESULTS_1_36E21", "TOKENS_PER_PARAM", "architecture_grid", "chinchilla", "chinchilla_loss",
    "chinchilla_status", "closed_form_optimum", "family_config", "optimal",
    # memory
    "ATTENTION_BACKENDS", "CUDA_CONTEXT_GIB", "DS_MAX_LIVE_PARAMETERS", "DS_REDUCE_BUCKET", "FRAGMENTATION", "GIB",
    "STRATEGIES", "STRATEGY_HELP", "activation_memory", "estimate_memory",
    # batch
    "SAFETY_MARGIN", "plan_batch",
    # timing
    "DEFAULT_SETUPS", "estimate_time",
    # cli
    "ARCH_HEADERS", "main",
]
