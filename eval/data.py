"""Read and validate local multiple-choice JSONL files (ARC, OpenBookQA) before lm-eval sees them.

Accepted line schemas (one JSON object per line; blank lines are skipped):

  HF datasets, ARC        {"id", "question": str,      "choices": {"text": [...], "label": [...]}, "answerKey"}
  HF datasets, OBQA       {"id", "question_stem": str, "choices": {"text": [...], "label": [...]}, "answerKey"}
  official AI2 release    {"id", "question": {"stem": str, "choices": [{"text", "label"}, ...]}, "answerKey"}

Every file is normalised to the HF schema the task YAML reads (`question` for ARC,
`question_stem` for OpenBookQA) and written to a scratch directory, so lm-eval's `json` loader
sees one consistent schema. lm-eval itself would fail deep inside Jinja or pyarrow on a bad line;
here the error names the file, the line and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EvalError

MAX_REPORTED_ERRORS = 5


def _question_text(rec: dict[str, Any]) -> tuple[str | None, Any]:
    """(question text, raw choices) from any accepted schema; (None, None) if none matches."""
    q = rec.get("question")
    if isinstance(q, dict):  # official AI2 release: choices nested inside the question
        return q.get("stem"), q.get("choices")
    if isinstance(q, str):
        return q, rec.get("choices")
    if isinstance(rec.get("question_stem"), str):
        return rec["question_stem"], rec.get("choices")
    return None, None


def _choices(raw: Any) -> tuple[list[str], list[str]] | str:
    """(texts, labels) from {"text": [...], "label": [...]} or [{"text", "label"}, ...]; else a problem."""
    if isinstance(raw, dict):
        texts, labels = raw.get("text"), raw.get("label")
    elif isinstance(raw, list) and all(isinstance(c, dict) for c in raw):
        texts, labels = [c.get("text") for c in raw], [c.get("label") for c in raw]
    else:
        return 'choices must be {"text": [...], "label": [...]} (HF) or [{"text": ..., "label": ...}, ...] (AI2)'
    if not isinstance(texts, list) or not isinstance(labels, list):
        return "choices.text and choices.label must be lists"
    if len(texts) != len(labels):
        return f"choices.text has {len(texts)} entries but choices.label has {len(labels)}"
    if len(texts) < 2:
        return f"a multiple-choice question needs at least 2 choices, got {len(texts)}"
    if not all(isinstance(t, str) and t.strip() for t in texts):
        return "every choice text must be a non-empty string"
    if not all(isinstance(lab, (str, int)) and not isinstance(lab, bool) for lab in labels):
        return "every choice label must be a string (A-E or 1-5)"
    labels = [str(lab).strip() for lab in labels]
    if len(set(labels)) != len(labels):
        return f"choice labels repeat: {labels}"
    return texts, labels


def _normalise(rec: Any, question_field: str) -> dict[str, Any] | str:
    """The record in the HF schema with `question_field`, or a one-line description of the problem."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    question, raw_choices = _question_text(rec)
    if question is None:
        return 'no question: expected "question" (string, or {"stem", "choices"} as in AI2\'s release) or "question_stem"'
    if not question.strip():
        return "the question text is empty"
    parsed = _choices(raw_choices)
    if isinstance(parsed, str):
        return parsed
    texts, labels = parsed
    key = rec.get("answerKey")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or not str(key).strip():
        return 'no "answerKey" (the label of the correct choice)'
    key = str(key).strip()
    if key not in labels:
        return f"answerKey {key!r} is not among the choice labels {labels}"
    out = {"id": str(rec.get("id", "")), question_field: question, "choices": {"text": texts, "label": labels}, "answerKey": key}
    return out


def read_questions(path: Path, question_field: str) -> list[dict[str, Any]]:
    """Parse and validate every line of `path`; raise one EvalError listing the first bad lines."""
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    n_bad = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text ({e}). Save the file as UTF-8 JSONL.") from e
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rec: Any = None
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            result: dict[str, Any] | str = f"not valid JSON ({e.msg} at column {e.colno})"
        else:
            result = _normalise(rec, question_field)
        if isinstance(result, str):
            n_bad += 1
            if len(problems) < MAX_REPORTED_ERRORS:
                ident = rec.get("id") if isinstance(rec, dict) else None
                problems.append(f"{path}:{lineno}: {result}" + (f" (id {ident})" if ident else ""))
            continue
        if not result["id"]:
            result["id"] = f"{path.name}:{lineno}"
        records.append(result)
    if n_bad:
        more = f"\n  ... and {n_bad - len(problems)} more bad lines" if n_bad > len(problems) else ""
        raise EvalError(
            f"{n_bad} invalid line(s) in {path}:\n  " + "\n  ".join(problems) + more
            + "\nFix: one JSON object per line in the HF-datasets schema "
            + ('{"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}' if question_field == "question"
               else '{"id", "question_stem", "choices": {"text": [...], "label": [...]}, "answerKey"}')
            + " (or the official AI2 schema with question.stem / question.choices)."
        )
    if not records:
        raise EvalError(f"{path} holds no questions (the file is empty). Pass the test split's JSONL.")
    return records


def find_data_files(data_dir: Path, wanted: dict[str, str]) -> dict[str, Path]:
    """{task: data_dir/file_name} for wanted = {task: file_name}; names also match case-insensitively
    (AI2 ships ARC-Easy-Test.jsonl). One error lists every missing file."""
    if not data_dir.is_dir():
        raise EvalError(f"--data-dir {data_dir}: no such directory.")
    by_lower = {p.name.lower(): p for p in sorted(data_dir.iterdir()) if p.is_file()}
    found, missing = {}, []
    for task, file_name in wanted.items():
        path = data_dir / file_name
        path = path if path.is_file() else by_lower.get(file_name.lower())
        if path is None:
            missing.append(f"{file_name} (needed for task {task})")
        else:
            found[task] = path
    if missing:
        present = sorted(p.name for p in data_dir.glob("*.jsonl"))
        raise EvalError(
            f"{data_dir} has no {' and no '.join(missing)}; it holds {present or 'no .jsonl files'}. "
            "Add the file(s) in the HF-datasets JSONL schema, or leave those tasks out with --tasks."
        )
    return found


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
