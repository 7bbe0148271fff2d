"""Reports for every benchmark: number formatting, the plain-text table (the stack's one printer,
training/tables.py), a markdown table, and atomic JSON / text files.

Standard library only, like its imports: `python -m benchmarks.data_bench` and the GPU check use it without
torch. The atomic write is data_prep.atomic's (temp file + rename), imported when a file is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from training.tables import fmt, format_table, write_json  # noqa: F401 - the stack's printers, re-exported

__all__ = ["fmt", "format_table", "markdown_table", "slug", "write_json", "write_text"]


def markdown_table(headers: Sequence[str], align: str, rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub table without padding (diff-friendly in committed results): `align` has one letter per
    column, l or r; an empty cell renders as `| |`."""
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {c} " if c not in (None, "") else " " for c in cells) + "|"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def slug(text: str) -> str:
    """Lower-case file-name part: `NVIDIA H100 80GB HBM3` -> `nvidia-h100-80gb-hbm3`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_text(path: str | Path, text: str) -> Path:
    """Atomically (a reader never sees half a file), creating the parent directories."""
    from data_prep.atomic import atomic_write_text

    return atomic_write_text(path, text)
