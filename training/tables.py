"""Tables and numbers for people: the one console/markdown table printer, number and duration
formatting, and `--json FILE|-` output, for every tool that reports (training.analysis, training.planning,
the benchmarks). Standard library only (data_prep.atomic, imported when a file is written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], markdown: bool = False, *,
                 align: Optional[str] = None, padded: bool = True) -> str:
    """Right-align numbers, left-align text; `markdown=True` gives a GitHub table.

    align: one letter per column, l or r, instead of guessing from the cells (a column of numbers and
    notes stays as asked). padded=False (markdown only): no padding, one space around each cell and `| |`
    for an empty one, so that a committed result diffs by the cells that changed, not by column widths."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    if align is not None:
        if len(align) != len(headers) or set(align) - {"l", "r"}:
            raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns; give one l "
                             f"(left) or r (right) per column")
        right = [a == "r" for a in align]
    else:
        right = [all(_looks_numeric(r[i]) for r in rows if r[i]) and any(r[i] for r in rows)
                 for i in range(len(headers))]
    if not padded:
        if not markdown:
            raise ValueError("padded=False is for markdown tables (markdown=True): a plain table needs its padding")
        rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
        return "\n".join([_bare_line(headers), rule, *(_bare_line(r) for r in rows)])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, right)]
        return ("| " + " | ".join(out) + " |") if markdown else "  ".join(out).rstrip()

    sep = ("|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, right)) + "|"
           if markdown else "  ".join("-" * w for w in widths))
    return "\n".join([line(list(headers)), sep] + [line(r) for r in rows])


def _bare_line(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _looks_numeric(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").strip()
    try:
        float(t)
        return True
    except ValueError:
        return t in ("-", "n/a")


def fmt(value: Any, spec: str = ".3f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def duration(seconds: float | None) -> str:
    """12.3 s / 4.5 min / 3.21 h / 2.10 d: readable at every run length."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2f} {unit}"
    return f"{seconds:.1f} s"


def write_json(obj: Any, target: str | Path | None) -> None:
    """`--json FILE` writes the file atomically (temp file + rename), `--json -` prints to stdout, None
    does nothing. Values JSON cannot hold (paths, dtypes) are written as their str()."""
    if target is None or target == "":
        return
    text = json.dumps(obj, indent=2, default=str)
    if str(target) == "-":
        print(text)
    else:
        from data_prep.atomic import atomic_write_text

        atomic_write_text(target, text + "\n")
