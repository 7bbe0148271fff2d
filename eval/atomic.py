"""Atomic writes: write a temporary sibling, then rename it into place.

A reader (the Hub uploader, a later `--compare`, a dashboard tailing the directory) must never see
a half-written results file or export folder. `os.replace` is atomic on POSIX when source and
target are on the same filesystem, which holds because the temporary lives next to the target.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create directory `path` by `fill(tmp_dir)`, then rename it into place.

    An existing `path` is replaced only once `fill` has succeeded, so a failure (a model that does
    not export, a full disk) leaves the previous folder intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)  # a directory cannot be renamed onto a non-empty one
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
