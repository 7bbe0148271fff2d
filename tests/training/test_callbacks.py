"""The Callback base class (every hook the Trainer calls, typos refused) and the one metrics path:
trainer.log(record) -> run log, console line and accelerate trackers, for every callback's records."""

import inspect
import re
import types
from pathlib import Path

import pytest
import torch

from training import callbacks as cb
from training import run_log
from training.trainer import Trainer

TRAINER_PY = Path(__file__).resolve().parents[2] / "training" / "trainer.py"


def test_the_base_class_has_exactly_the_hooks_the_trainer_calls():
    source = TRAINER_PY.read_text()
    emitted = set(re.findall(r'_emit\("(\w+)"', source)) | set(re.findall(r"cb\.(on_\w+)\(", source))
    assert emitted == set(cb.HOOKS)
    for name in cb.HOOKS:  # documented no-ops taking the trainer first
        hook = getattr(cb.Callback, name)
        assert hook.__doc__ and list(inspect.signature(hook).parameters)[:2] == ["self", "trainer"]
        assert hook(cb.Callback(), None, *([None] * (len(inspect.signature(hook).parameters) - 2))) is None


def test_every_callback_in_the_module_subclasses_callback():
    classes = [c for _, c in inspect.getmembers(cb, inspect.isclass)
               if c.__module__ == cb.__name__ and any(n.startswith("on_") for n in vars(c))]
    assert len(classes) >= 7 and all(issubclass(c, cb.Callback) for c in classes), classes


def test_a_misspelt_hook_is_refused_naming_the_close_match():
    with pytest.raises(TypeError, match=r"^Typo\.on_step_ned is not a Trainer hook: did you mean on_step_end\?$"):
        class Typo(cb.Callback):
            def on_step_ned(self, trainer, out):
                pass
    with pytest.raises(TypeError, match=r"on_banana is not a Trainer hook \(hooks: on_train_start, "):
        class Unknown(cb.Callback):
            def on_banana(self, trainer):
                pass


def _cfg(tmp_path, trackers=("tensorboard",)):
    return types.SimpleNamespace(nonfinite_policy="stop", nonfinite_max_skips=3, max_iters=10, trackers=list(trackers),
                                 run_name="t", out_dir=str(tmp_path), to_dict=lambda: {"max_iters": 10})


class _Accelerator:
    """What the logging path touches: rank, device, init_trackers, log (accelerate: main process only)."""

    def __init__(self, main=True):
        self.is_main_process, self.process_index, self.device = main, 0 if main else 1, torch.device("cpu")
        self.trackers, self.logged = [], []

    def init_trackers(self, name, config):
        self.trackers.append(name)
        self.tracker_config = config

    def log(self, values, step=None):
        self.logged.append((step, values))


def _trainer(tmp_path, callbacks, main=True, trackers=("tensorboard",)):
    return Trainer(cfg=_cfg(tmp_path, trackers), accelerator=_Accelerator(main), model=None, optimizer=None,
                   scheduler=None, batch=None, train_loader=None, callbacks=callbacks, run_info={"n_params": 1})


def test_a_trainer_refuses_a_callback_that_is_not_one(tmp_path):
    class Old:
        def on_step_end(self, trainer, out):
            pass

    with pytest.raises(TypeError, match=r"callbacks\[1\] \(Old\) is not a training.callbacks.Callback"):
        _trainer(tmp_path, [cb.Validation(), Old()])


def test_harness_profile_and_loop_records_take_the_one_path(tmp_path, monkeypatch):
    """Before, harness and profile records reached the run log but not the trackers."""
    scores = {"arc_easy": {"acc": 0.25, "acc_norm": 0.5, "alias": "arc_easy"}}
    logger = cb.JsonlLogger(str(tmp_path))
    harness = cb.HarnessEval(interval=1, data_dir=None, limit=2, evaluate=lambda *a, **k: {"results": scores})
    profiler = cb.Profiler(1, 1, str(tmp_path))
    trainer = _trainer(tmp_path, [logger, harness, profiler])
    trainer.model = torch.nn.Linear(2, 2)
    trainer.accelerator.unwrap_model = lambda m: m
    trainer.accelerator.wait_for_everyone = lambda: None
    monkeypatch.setattr(cb, "params_are_sharded", lambda acc: False)

    logger.on_train_start(trainer)
    profiler.on_step_begin(trainer)
    trainer.state.iter = 1
    harness.on_step_end(trainer, None)
    profiler.on_step_end(trainer, None)
    trainer.log({"type": "skipped_step", "iter": 1, "skipped_steps": 1})

    log = run_log.read(tmp_path)
    assert [r["type"] for r in log.records] == ["config", "eval_harness", "profile", "skipped_step"]
    assert log.of_type("eval_harness")[0]["tasks"] == {"arc_easy": {"acc": 0.25, "acc_norm": 0.5}}
    assert (tmp_path / "profile" / "trace_rank0.json").is_file()
    tracked = dict((k, (step, v)) for step, values in trainer.accelerator.logged for k, v in values.items())
    assert tracked["eval_harness/tasks/arc_easy/acc"] == (1, 0.25)
    assert tracked["eval_harness/tasks/arc_easy/acc_norm"] == (1, 0.5)
    assert tracked["skipped_step/skipped_steps"] == (1, 1)
    assert trainer.accelerator.trackers == ["t"]
    # the run's settings go to the trackers as their config, not as metrics
    assert trainer.accelerator.tracker_config == {"max_iters": 10, "n_params": 1}
    assert not any(k.startswith("config/") for k in tracked)


def test_other_ranks_and_untracked_runs_write_nothing(tmp_path):
    other = _trainer(tmp_path / "r1", [cb.JsonlLogger(str(tmp_path / "r1"))], main=False)
    other.log({"type": "eval", "iter": 1, "val_loss": 2.0})
    assert not (tmp_path / "r1").exists() and other.accelerator.logged == []

    untracked = _trainer(tmp_path / "r0", [cb.JsonlLogger(str(tmp_path / "r0"))], trackers=())
    untracked.callbacks[0].on_train_start(untracked)
    untracked.log({"type": "eval", "iter": 1, "val_loss": 2.0, "val_ppl": 7.4, "time_ms": 1.0})
    assert [r["type"] for r in run_log.read(tmp_path / "r0").records] == ["config", "eval"]
    assert untracked.accelerator.logged == []
