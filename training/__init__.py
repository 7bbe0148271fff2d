"""Training under `accelerate launch`: recipes, the loop, callbacks, checkpoints, planning and analysis."""
