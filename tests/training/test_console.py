"""The console lines: one format for every record type, progress and time left on train lines."""

from training.console import format_record


def test_every_record_type_has_one_readable_line():
    train = {"type": "train", "iter": 120, "loss": 4.41234, "lr": 2.41e-3, "grad_norm": 0.4121, "tokens_per_sec": 15212.3,
             "mfu": None, "time_ms": 84.2, "mem_peak_gb": 0.512, "tokens": 1_966_080}
    line = format_record(train, 300, elapsed_s=102, eta_s=153)
    assert line == ("iter 120/300 | loss 4.4123 | lr 2.41e-03 | gnorm 0.412 | 15,212 tok/s | 84 ms/it | mem 0.51 GB | "
                    "1.97M tok | 0:01:42 < 0:02:33")
    assert "mfu 41.0%" in format_record({**train, "mfu": 0.41}, 300)
    assert format_record({"type": "eval", "iter": 150, "val_loss": 4.35221, "val_ppl": 77.66, "time_ms": 1100}, 300) == \
        "iter 150/300 | val loss 4.3522 (ppl 77.7) | 1.1 s"
    assert format_record({"type": "checkpoint", "iter": 150, "path": "/r/checkpoints/iter_000150", "reason": "interval",
                          "time_ms": 312}, 300) == "iter 150/300 | checkpoint iter_000150 (interval) | 0.3 s"
    harness = {"type": "eval_harness", "iter": 300, "tasks": {"arc_easy": {"acc": 0.3, "acc_norm": 0.31}}, "time_ms": 5000}
    assert format_record(harness, 300) == "iter 300/300 | lm-eval acc_norm: arc_easy 0.310 | 5.0 s"
    assert "step skipped" in format_record({"type": "skipped_step", "iter": 4, "skipped_steps": 1}, 10)
    assert "loss spike" in format_record({"type": "loss_spike", "iter": 4, "loss": 9.0, "zscore": 7.5}, 10)
    assert format_record({"type": "config"}, 10) is None and format_record({"type": "nonfinite", "iter": 3}, 10) is None
    for rec in (train, harness):
        assert "{" not in format_record(rec, 300)
