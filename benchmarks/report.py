"""Reports for every benchmark: number formatting, the plain-text table (the stack's one printer,
training.analysis.format_table), a markdown table, and atomic JSON / text files.

Standard library only, like its imports: `python -m benchmarks.data_bench` and the GPU check use it without
torch. The atomic write is data_prep.atomic's (temp file + rename), imported when a file is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from training.analysis import fmt, format_table  # noqa: F401 - the stack's table printer, re-exported

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


def write_json(obj: Any, target: str | Path | None) -> None:
    """`--json FILE` writes the file atomically, `--json -` prints to stdout, None does nothing.
    Values JSON cannot hold (paths, dtypes) are written as their str()."""
    if target is None or target == "":
        return
    text = json.dumps(obj, indent=2, default=str)
    if str(target) == "-":
        print(text)
    else:
        write_text(target, text + "\n")
