"""The packages' dependency order, read from the source with ast (every import, lazy ones included):
modeling and data_prep import none of ours; training imports modeling and data_prep, and eval/ only from
its entry point; eval imports training's standard-library contracts only; benchmarks sit on top
(docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("modeling", "data_prep", "training", "eval", "benchmarks")
# training modules eval/ may import: standard library only (tests/training/test_run_log.py checks no torch)
CONTRACTS = {"training.checkpoint_layout", "training.run_log", "training.precision"}
ALLOWED = {
    "modeling": set(),
    "data_prep": {"modeling"},
    "training": {"modeling", "data_prep"},
    "eval": {"modeling", "data_prep", *CONTRACTS},
    "benchmarks": {"modeling", "data_prep", "training"},
}
# entry points compose the packages (documented shims and the training script)
ENTRY_POINTS = {
    "training/run.py": {"eval"},  # HarnessEval gets eval.harness.evaluate_model from here
    "data_prep/bench.py": {"benchmarks"},  # the old name of benchmarks.data_bench, for one release
    "training/benchmark.py": {"benchmarks"},
    "training/sweep.py": {"benchmarks"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in OURS:  # `from training import run_log` imports training.run_log
                names.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return {n for n in names if n.split(".")[0] in OURS}


def _allowed(name: str, package: str, extra: set[str]) -> bool:
    top = name.split(".")[0]
    return top == package or top in extra or name in extra or any(
        name == a or name.startswith(a + ".") for a in ALLOWED[package])


@pytest.mark.parametrize("package", OURS)
def test_imports_follow_the_dependency_order(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        extra = ENTRY_POINTS.get(rel, set())
        bad += [f"{rel} imports {name}" for name in _imports(path) if not _allowed(name, package, extra)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from eval.harness import evaluate_model\n")
    assert not _allowed(next(iter(_imports(probe))), "training", set())
