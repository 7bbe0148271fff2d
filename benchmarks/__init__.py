"""Speed tools, in one home: the training-step benchmark (`python -m benchmarks.step`), the micro-batch x
accumulation sweep (`python -m benchmarks.sweep`), the GPU check (`bash benchmarks/gpu_check.sh`), the
modeling micro-benchmarks (`python benchmarks/microbench.py`) and the trainer's overhead
(`python benchmarks/trainer_overhead.py`). Shared parts: timing.py (device sync, timed calls, rounds,
phase timers), memory.py (out-of-memory test, peaks), report.py (tables, atomic JSON), and
trainer_step.py (the trainer's own step, which is what the step benchmark and the sweep time).
"""
