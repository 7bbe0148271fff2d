"""One run per out_dir: an advisory lock that global rank 0 holds for the life of the run.

A second run into the same out_dir would interleave log.jsonl and replace the first run's
checkpoints. `out_dir/.run.lock` holds who has it (host, PID, start time, command); the lock
itself is an flock on that file, which the kernel drops when the holder dies however it dies
(kill -9 included), so a lock whose holder is gone is simply taken over, with a message.
flock works on local disks and on NFSv4 (emulated with POSIX locks); on filesystems without
locking (some FUSE mounts) the lock degrades to the message in the file.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Optional

LOCK_NAME = ".run.lock"
logger = logging.getLogger("training")


class OutDirLocked(ValueError):
    """Another live run holds the out_dir (a ValueError: run.py prints it as one line, exit 2)."""


class OutDirLock:
    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "OutDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise OutDirLocked(
                f"out_dir {str(self.path.parent)!r} is in use by another run ({holder}); wait for it to end, "
                "stop it, or choose another out_dir"
            ) from None
        previous = _read(fd)
        if previous:  # the kernel dropped the old holder's lock: it is gone
            logger.warning("out_dir lock: taking over from a run that is no longer running (%s)", _describe(previous))
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: nobody to "take over" from
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"host {holder.get('host')}, PID {holder.get('pid')}, started {holder.get('started_utc')}"
