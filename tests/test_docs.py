"""The design docs and the pointers to them stay connected (text only: no torch, nothing imported).

- every `docs/NAME.md` that the code, the README or the docs name exists;
- every repository file path (`training/run.py`, `scripts/demo.sh`) and every `python -m MODULE`
  that docs/*.md name exists, so a renamed or removed module shows up here rather than as a
  stale sentence.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Not the repository's own text: environments, build output, run outputs, caches.
SKIP_DIRS = {"runs", "data", "build", "dist", "node_modules", "__pycache__"}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".txt"}
PACKAGES = ("modeling", "data_prep", "training", "eval", "benchmarks", "scripts", "tests")

DOC_REF = re.compile(r"(?<![\w/.-])docs/[\w./-]+?\.md\b")
FILE_REF = re.compile(rf"(?<![\w/.-])((?:{'|'.join(PACKAGES)})/[\w/.-]*?\.(?:py|sh))\b")
MODULE_REF = re.compile(rf"python -m ((?:{'|'.join(PACKAGES)})(?:\.\w+)*)")


def repo_text_files() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                       and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in TEXT_SUFFIXES or name == "Makefile":
                found.append(path)
    return sorted(found)


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def module_exists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file() or (path / "__init__.py").is_file()


def test_docs_folder_holds_the_design_docs():
    names = {p.name for p in doc_files()}
    assert {"architecture.md", "formats.md", "flops_and_mfu.md"} <= names, names


def test_every_docs_path_mentioned_exists():
    missing = []
    for path in repo_text_files():
        if path == Path(__file__).resolve():  # its own examples name missing docs on purpose
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            for ref in DOC_REF.findall(line):
                if not (ROOT / ref).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{lineno}: {ref}")
    assert not missing, "references to docs that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_every_file_and_module_a_doc_names_exists(doc):
    missing = []
    for lineno, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for ref in FILE_REF.findall(line):
            if not (ROOT / ref).is_file():
                missing.append(f"{doc.name}:{lineno}: {ref}")
        for module in MODULE_REF.findall(line):
            if not module_exists(module):
                missing.append(f"{doc.name}:{lineno}: python -m {module}")
    assert not missing, "paths named in the docs that are not in the repository:\n" + "\n".join(missing)


def test_the_checks_catch_a_missing_path(tmp_path):
    """The patterns find what they are meant to (a check that matches nothing would always pass)."""
    line = ("see docs/formats.md and docs/nope.md; `training/run.py`, training/nope.py, "
            "scripts/demo.sh; python -m data_prep.prepare, python -m training.planning, python -m eval.nope")
    assert DOC_REF.findall(line) == ["docs/formats.md", "docs/nope.md"]
    assert FILE_REF.findall(line) == ["training/run.py", "training/nope.py", "scripts/demo.sh"]
    assert [m for m in MODULE_REF.findall(line) if not module_exists(m)] == ["eval.nope"]
    assert not DOC_REF.findall("eval/docs/x.md ds_configs/README.md")
