"""What the trainer adds to a step: `Trainer.iteration()` (data fetch, accumulation bookkeeping, the
non-finite guard, callbacks: logging, metrics, memory) and the per-step stop agreement, against a bare
forward / backward / clip / optimizer step / LR step of the same model and batch.

    python benchmarks/trainer_overhead.py --data_dir=data/demo                              # 1 process
    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/trainer_overhead.py \\
        --data_dir=data/demo                                                                # ZeRO-1, 2 processes

Any recipe key can be given (--key=value, defaults: the demo recipe with log_interval 10). The two
loops alternate in rounds on the same trainer (same weights, optimizer and engine), so drift in
machine load hits both alike; the result is the median ratio over rounds. Rank 0 prints a markdown
row and, with --json FILE, writes the figures.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_json  # noqa: E402
from benchmarks.timing import synchronize  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.console import quiet_deepspeed_import, setup_console  # noqa: E402

quiet_deepspeed_import()

import torch  # noqa: E402

from training.distributed import is_deepspeed  # noqa: E402
from training.run import build_trainer  # noqa: E402

DEMO = "training/recipes/demo_cpu.yaml"


def bare_step(trainer, x, y) -> None:
    """The minimum a step needs: what a plain PyTorch (or DeepSpeed) loop would write."""
    model, acc = trainer.model, trainer.accelerator
    for _ in range(trainer.batch.grad_accum_steps):
        loss = model(input_ids=x, shift_labels=y, return_logits=False).loss
        if is_deepspeed(acc):
            model.backward(loss)
        else:
            acc.backward(loss)
    if is_deepspeed(acc):
        model.step()
    else:
        if trainer.cfg.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), trainer.cfg.grad_clip)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()


def _time_trainer_parts(trainer) -> dict[str, float]:
    """Wrap what the trainer does beyond the bare step (batch fetch, callbacks, the non-finite guard, the
    stop agreement) with timers; returns the dict the timers fill (seconds)."""
    spent = {"data_fetch": 0.0, "callbacks": 0.0, "guard": 0.0, "stop_agreement": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    batches = trainer._batches
    trainer._batches = iter(timed("data_fetch", lambda: next(batches)), None)  # next() on the loader, timed
    trainer._emit = timed("callbacks", trainer._emit)
    trainer._guard_step = timed("guard", trainer._guard_step)
    trainer._should_stop = timed("stop_agreement", trainer._should_stop)
    return spent


def main(argv: list[str]) -> int:
    json_out = next((a.split("=", 1)[1] for a in argv if a.startswith("--json=")), None)
    rounds = int(next((a.split("=", 1)[1] for a in argv if a.startswith("--rounds=")), "5"))
    iters = int(next((a.split("=", 1)[1] for a in argv if a.startswith("--iters=")), "20"))
    argv = [a for a in argv if not a.startswith(("--json=", "--rounds=", "--iters="))]
    out_dir = tempfile.mkdtemp(prefix="overhead_")
    overrides = {"log_interval": 10, "eval_interval": 0, "checkpoint_interval": 0, "export_hf": False,
                 "out_dir": out_dir, **parse_overrides(argv)}
    overrides.setdefault("max_iters", 3 + rounds * iters)  # the trainer's iterations: warm-up + timed
    cfg = load_config(DEMO, overrides)
    rank = int(os.environ.get("RANK", "0"))
    setup_console(rank)
    trainer, _ = build_trainer(cfg, DEMO)
    acc = trainer.accelerator
    trainer.start()
    x, y = (t.to(acc.device) for t in next(iter(trainer.train_loader))[:2])

    def sync():
        synchronize(acc.device)
        acc.wait_for_everyone()

    for _ in range(3):  # warm-up: allocator, DeepSpeed buffers, first-call paths of both loops
        bare_step(trainer, x, y)
        trainer.iteration()
    spent = _time_trainer_parts(trainer)
    bare, full = [], []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            bare_step(trainer, x, y)
        sync()
        t1 = time.perf_counter()
        for _ in range(iters):
            trainer.iteration()
            trainer._should_stop()
        sync()
        t2 = time.perf_counter()
        bare.append((t1 - t0) / iters)
        full.append((t2 - t1) / iters)
    ratios = [f / b for f, b in zip(full, bare)]
    per_iter = {k: 1000 * v / (rounds * iters) for k, v in spent.items()}
    result = {
        "world_size": acc.num_processes, "strategy": "DeepSpeed ZeRO-%s" % trainer.run_info.get("ds_stage")
        if is_deepspeed(acc) else type(trainer.model).__name__, "device": str(acc.device),
        "micro_batch_size": cfg.micro_batch_size, "grad_accum_steps": trainer.batch.grad_accum_steps, "seq_len": cfg.seq_len,
        "log_interval": cfg.log_interval, "rounds": rounds, "iters_per_round": iters,
        "bare_ms": 1000 * statistics.median(bare), "trainer_ms": 1000 * statistics.median(full),
        "overhead_median": statistics.median(ratios) - 1, "overhead_per_round": [r - 1 for r in ratios],
        "threads": torch.get_num_threads(),
        # the trainer's own work, timed directly (less noisy than the difference of two loops)
        "trainer_parts_ms": per_iter, "trainer_parts_share": sum(per_iter.values()) / (1000 * statistics.median(full)),
    }
    if acc.is_main_process:
        print(f"| {result['world_size']} | {result['strategy']} | {result['bare_ms']:.1f} | {result['trainer_ms']:.1f} | "
              f"{100 * result['overhead_median']:+.1f}% | {', '.join(f'{100 * r:+.1f}' for r in result['overhead_per_round'])} | "
              f"{', '.join(f'{k} {v:.2f}' for k, v in per_iter.items())} ms ({100 * result['trainer_parts_share']:.2f}%) |")
        write_json(result, json_out)
    acc.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
