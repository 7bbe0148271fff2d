"""What the trainer adds to a step: `Trainer.iteration()` (data fetch, accumulation bookkeeping, the
non-finite guard, callbacks: logging, metrics, memory) and the per-step stop agreement, against a bare
forward / backward / clip / optimizer step / LR step of the same model and batch.

    python benchmarks/trainer_overhead.py --data_dir=data/demo                              # 1 process
    accelerate launch --config_file accelerate_configs/cpu.yaml benchmarks/trainer_overhead.py \\
        --data_dir=data/demo                                                                # ZeRO-1, 2 processes

Any recipe key can be given (--key=value, defaults: the demo recipe with log_interval 10). The two
loops alternate in rounds on the same trainer (same weights, optimizer and engine; benchmarks.timing's
time_interleaved, which also swaps who goes first every other round), so drift in machine load hits
both alike; the result is the median ratio over rounds. Rank 0 prints a markdown
row and, with --json FILE, writes the figures.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_json  # noqa: E402
from benchmarks.timing import PhaseTimer, time_interleaved  # noqa: E402
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


PARTS = ("data_fetch", "callbacks", "guard", "stop_agreement")  # what the trainer adds, timed directly


def _time_trainer_parts(trainer) -> PhaseTimer:
    """Wrap what the trainer does beyond the bare step (batch fetch, callbacks, the non-finite guard, the
    stop agreement) with a timer of host seconds per part (PARTS). No device: the parts are the trainer's
    own Python, and a synchronize around each would add waits that the trainer does not have."""
    timer = PhaseTimer()

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            with timer(name):
                return fn(*args, **kwargs)
        return wrapper

    batches = trainer._batches
    trainer._batches = iter(timed("data_fetch", lambda: next(batches)), None)  # next() on the loader, timed
    trainer._emit = timed("callbacks", trainer._emit)
    trainer._guard_step = timed("guard", trainer._guard_step)
    trainer._should_stop = timed("stop_agreement", trainer._should_stop)
    return timer


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

    def bare_loop():
        for _ in range(iters):
            bare_step(trainer, x, y)

    def trainer_loop():
        for _ in range(iters):
            trainer.iteration()
            trainer._should_stop()

    for _ in range(3):  # warm-up: allocator, DeepSpeed buffers, first-call paths of both loops
        bare_step(trainer, x, y)
        trainer.iteration()
    parts = _time_trainer_parts(trainer)
    # the ranks start each timed loop together (untimed barrier), the device synchronized around it
    loops = time_interleaved({"bare": bare_loop, "trainer": trainer_loop}, rounds, acc.device,
                             setup=acc.wait_for_everyone)
    bare, full = ([t / iters for t in loops[k]] for k in ("bare", "trainer"))
    ratios = [f / b for f, b in zip(full, bare)]
    per_iter = {k: 1000 * parts.spent.get(k, 0.0) / (rounds * iters) for k in PARTS}
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
