"""Reports for every benchmark: number formatting and tables (re-exported from training/tables.py, the
stack's one printer: committed results use its `markdown=True, padded=False` form, which diffs by cell),
file-name slugs, and atomic JSON / text files.

Standard library only, like its imports: `python -m benchmarks.data_bench` and the GPU check use it without
torch. The atomic write is data_prep.atomic's (temp file + rename), imported when a file is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.tables import fmt, format_table, write_json  # noqa: F401 - the stack's printers, re-exported

__all__ = ["fmt", "format_table", "slug", "write_json", "write_text"]


def slug(text: str) -> str:
    """Lower-case file-name part: `NVIDIA H100 80GB HBM3` -> `nvidia-h100-80gb-hbm3`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_text(path: str | Path, text: str) -> Path:
    """Atomically (a reader never sees half a file), creating the parent directories."""
    from data_prep.atomic import atomic_write_text

    return atomic_write_text(path, text)
