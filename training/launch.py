"""`python -m training.launch`: `accelerate launch`, ending an interrupted run with one line.

    python -m training.launch --config_file accelerate_configs/cpu.yaml training/run.py --recipe ... [--key=value ...]

The arguments are `accelerate launch`'s, and so is the launch: accelerate's own launch command runs in
this process (torchrun's agent included), so configs, flags and the workers' environment are the same.
What differs is a stop by signal. On Ctrl-C (SIGINT) or a scheduler's SIGTERM the workers agree to stop,
checkpoint and exit (training/trainer.py); torchrun's agent forwards the signal, waits for them, and
then re-raises it as a `SignalException`, which under `accelerate launch` ends in a 25-line traceback
and exit code 1. Here it ends with one line naming the newest checkpoint and how to continue:

    interrupted (SIGINT): checkpoint runs/demo/checkpoints/iter_000120 saved; continue with --resume=auto

and exit code 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), what a shell reports for a
program a signal stopped. Anything else (a worker that fails, a bad flag) ends as under `accelerate launch`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

# torchrun's own notices of a signal shutdown (their loggers and message templates): the one line replaces them.
_NOTICE_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")
_DEATH_SIGNAL = "Received %s death signal"
_CLOSING_SIGNAL = "Sending process %s closing signal"


class _SignalShutdownNotices(logging.Filter):
    """Drops torchrun's 'Received 2 death signal, shutting down workers' and the 'Sending process N
    closing signal SIGINT' lines after it. Only after a death signal: on a worker failure the
    closing-signal lines say which processes were stopped, and they stay."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith(_DEATH_SIGNAL):
            self.stopping = True
            return False
        return not (self.stopping and msg.startswith(_CLOSING_SIGNAL))


def _training_out_dir(script: str, script_args: list[str]) -> Optional[Path]:
    """out_dir of training/run.py's arguments (its recipe, then the --key=value overrides), or None for
    another script or arguments that do not parse (the workers said why already)."""
    if Path(script).name != "run.py" and script != "training.run":
        return None
    from training.config import config_from_argv

    try:
        return Path(config_from_argv(script_args)[0].out_dir)
    except Exception:  # noqa: BLE001 - only a message depends on it
        return None


def interrupted_message(signame: str, out_dir: Optional[Path], started: float) -> str:
    """The one line: the newest complete checkpoint of out_dir, and whether this launch wrote it."""
    if out_dir is None:
        return f"interrupted ({signame}); the workers checkpoint on SIGINT/SIGTERM: continue with --resume=auto"
    from training.checkpoint_layout import MANIFEST, list_checkpoints

    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        return f"interrupted ({signame}) before the first checkpoint of {out_dir}: nothing to resume"
    newest = checkpoints[-1]
    if (newest / MANIFEST).stat().st_mtime >= started:
        return f"interrupted ({signame}): checkpoint {newest} saved; continue with --resume=auto"
    return (f"interrupted ({signame}) before this launch saved a checkpoint; --resume=auto continues from "
            f"{newest}")


def _reap_children() -> None:
    """Wait for child processes still running (a Ctrl-C reaches the workers too, and they are saving):
    the prompt comes back after their last line. A second Ctrl-C stops waiting."""
    try:
        while True:
            os.waitpid(-1, 0)
    except (ChildProcessError, KeyboardInterrupt):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from training.console import quiet_deepspeed_import

    quiet_deepspeed_import()  # accelerate's launcher imports DeepSpeed too: no "Setting accelerator to CPU"
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException

    parser = launch_command_parser()
    parser.prog = "python -m training.launch"
    args = parser.parse_args(argv)
    notices = _SignalShutdownNotices()
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).addFilter(notices)
    started = time.time()
    try:
        launch_command(args)
        return 0
    except SignalException as exc:  # torchrun's agent: the workers were signalled and waited for
        sig = signal.Signals(exc.sigval)
    except KeyboardInterrupt:  # before torchrun's agent took over the signals, or accelerate's simple launcher
        sig = signal.SIGINT
        _reap_children()
    for s in (signal.SIGINT, signal.SIGTERM):  # the report is not itself interrupted into a traceback
        signal.signal(s, signal.SIG_IGN)
    print(interrupted_message(sig.name, _training_out_dir(args.training_script, args.training_script_args), started),
          file=sys.stderr, flush=True)
    return 128 + sig.value


if __name__ == "__main__":
    sys.exit(main())
