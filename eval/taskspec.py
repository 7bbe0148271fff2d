"""The three benchmarks, and how to build lm-eval Task objects for them from the Hub or local files.

Hub mode uses lm-eval's own task definitions (datasets `allenai/ai2_arc`, `allenai/openbookqa`).
Local mode (`--data-dir`) uses the YAML twins in `eval/tasks/` (`llmstack_arc_easy`, ...: their own
names, so lm-eval's CLI can load them beside its built-in tasks): each file is validated and
normalised into a scratch dir first (see `data.py`) and read with lm-eval's `json` loader. Both
modes register the benchmark's own name here (`arc_easy`, ...), so results files and comparisons
line up whatever the data source. lm-eval's own CLI reads the same YAMLs through
`eval/tasks/local_data.py` (README, "Evaluate and publish").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .data import find_data_files, read_questions, write_jsonl
from .errors import EvalError

log = logging.getLogger(__name__)

TASK_YAML_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class TaskInfo:
    name: str  # lm-eval task name, and the key in results JSON
    title: str  # for tables and model cards
    question_field: str  # the HF-schema field the prompt reads
    hub_dataset: str  # the dataset lm-eval's built-in task downloads (for model cards)
    hub_config: str
    builtin_dir: str  # lm-eval/tasks/<dir> holding the built-in YAML
    test_size: int  # questions in the official test split (a local file of another size is not it)


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("arc_easy", "ARC-Easy", "question", "allenai/ai2_arc", "ARC-Easy", "arc", 2376),
        TaskInfo("arc_challenge", "ARC-Challenge", "question", "allenai/ai2_arc", "ARC-Challenge", "arc", 1172),
        TaskInfo("openbookqa", "OpenBookQA", "question_stem", "allenai/openbookqa", "main", "openbookqa", 500),
    )
}
DEFAULT_TASKS: tuple[str, ...] = tuple(TASKS)


def parse_task_names(tasks: str | Sequence[str] | None) -> list[str]:
    """["arc_easy", ...] from None (all), a comma-separated string, or a list (which may hold commas)."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise EvalError(f"unknown task(s) {unknown or names}; choose from {', '.join(DEFAULT_TASKS)} (comma-separated).")
    return list(dict.fromkeys(names))


LOCAL_TASK_PREFIX = "llmstack_"  # eval/tasks/<name>.yaml registers task llmstack_<name> for lm-eval's CLI


class _YamlLoader(yaml.SafeLoader):
    """safe_load that keeps lm-eval's `!function module.name` tags as plain strings."""


_YamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def local_task_config(name: str) -> dict[str, Any]:
    """The shipped YAML of benchmark `name` (eval/tasks/<name>.yaml, task llmstack_<name>), as a dict."""
    path = TASK_YAML_DIR / f"{name}.yaml"
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise EvalError(f"{path}: invalid YAML ({e}). Restore it from git.") from e


def data_file_name(name: str) -> str:
    """The file name task `name` reads from --data-dir (declared in its YAML)."""
    return local_task_config(name)["dataset_kwargs"]["data_file"]


def local_task_configs(names: Sequence[str], data_dir: str | Path, scratch: Path) -> list[dict[str, Any]]:
    """lm-eval task configs reading validated, normalised copies (in `scratch`) of data_dir's files.

    All files are checked before any model is loaded, so a bad line fails in a second, not after
    minutes of loading weights.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    sources = find_data_files(data_dir, {name: data_file_name(name) for name in names})
    configs = []
    for name in names:
        cfg = local_task_config(name)
        # Registered under the benchmark's own name (only our tasks are indexed here: nothing is
        # shadowed), read with lm-eval's json loader from the validated copy.
        cfg["task"] = name
        cfg.pop("tag", None)
        cfg.pop("custom_dataset", None)
        cfg["dataset_path"] = "json"
        source = sources[name]
        records = read_questions(source, TASKS[name].question_field)
        copy = scratch / "data" / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(copy, records)
        # A private datasets cache inside the scratch dir: the json builder would otherwise leave an
        # Arrow copy of every run's files in ~/.cache/huggingface/datasets.
        cfg["dataset_kwargs"] = {"data_files": {"test": str(copy)}, "cache_dir": str(scratch / "hf_datasets_cache")}
        cfg["metadata"] = {**cfg.get("metadata", {}), "data_file": str(source)}
        log.info("%s: %d questions from %s", name, len(records), source)
        configs.append(cfg)
    return configs


def load_tasks(names: Sequence[str], data_dir: str | Path | None, scratch: Path) -> tuple[Any, list[Any]]:
    """(TaskManager, [Task]) for `names`, from local files (data_dir) or lm-eval's Hub tasks."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    if data_dir is not None:
        manager = TaskManager(include_defaults=False)  # only our tasks: no scan of lm-eval's ~10k YAMLs
        specs: list[Any] = local_task_configs(names, data_dir, scratch)
    else:
        # Index just the built-in folders we need (a full index takes seconds).
        root = Path(lm_eval.tasks.__file__).parent
        dirs = sorted({str(root / TASKS[n].builtin_dir) for n in names})
        manager = TaskManager(include_path=dirs, include_defaults=False)
        specs = list(names)
    try:
        loaded = manager.load(specs)
    except OSError as e:  # datasets: ConnectionError (offline, unreachable) or DatasetNotFoundError
        files = ", ".join(data_file_name(n) for n in names)
        raise EvalError(
            f"cannot download the benchmark data from the Hugging Face Hub ({e}). Offline, pass "
            f"--data-dir DIR with the test files ({files}) in the HF-datasets JSONL schema."
        ) from e
    return manager, [loaded["tasks"][n] for n in names]
