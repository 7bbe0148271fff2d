"""Our local task YAMLs mirror lm-eval's own definitions; local files in either schema become the same docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.data import read_questions
from eval.errors import EvalError
from eval.report import load_results_file, markdown_table
from eval.taskspec import TASKS, data_file_name, load_tasks, local_task_config

EVAL_DATA = Path(__file__).resolve().parents[2] / "tests" / "assets" / "eval"
SAME = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "should_decontaminate",
        "doc_to_decontamination_query", "test_split", "target_delimiter", "num_fewshot")


def _builtin(name: str) -> dict:
    """lm-eval's shipped YAML for `name`, with `include:` resolved (arc_challenge includes arc_easy)."""
    import lm_eval.tasks

    folder = Path(lm_eval.tasks.__file__).parent / TASKS[name].builtin_dir
    cfg = yaml.safe_load((folder / f"{name}.yaml").read_text())
    if "include" in cfg:
        cfg = {**yaml.safe_load((folder / cfg.pop("include")).read_text()), **cfg}
    return cfg


@pytest.mark.parametrize("name", list(TASKS))
def test_local_yaml_mirrors_lm_eval_builtin(name):
    ours, theirs = local_task_config(name), _builtin(name)
    assert theirs["task"] == name and ours["task"] == f"llmstack_{name}"  # its own name: shadows nothing
    assert ours["custom_dataset"] == "!function local_data.load" and "llmstack" in ours["tag"]
    for key in SAME:
        assert ours.get(key) == theirs.get(key), key
    assert ours["metadata"]["version"] == theirs["metadata"]["version"]
    assert theirs["dataset_path"] == TASKS[name].hub_dataset
    assert theirs.get("dataset_name", "main") == TASKS[name].hub_config


def test_file_names_are_those_of_the_releases():
    assert [data_file_name(n) for n in TASKS] == ["ARC-Easy-test.jsonl", "ARC-Challenge-test.jsonl", "OpenBookQA-test.jsonl"]


def test_local_tasks_build_offline_under_our_names(tmp_path):
    _, tasks = load_tasks(list(TASKS), EVAL_DATA, tmp_path)
    assert [t.config.task for t in tasks] == list(TASKS)
    easy = tasks[0]
    doc = easy.test_docs()[0]
    assert easy.doc_to_text(doc) == "Question: Which part of a plant absorbs water from the soil?\nAnswer:"
    assert easy.doc_to_choice(doc) == ["leaves", "roots", "flowers", "seeds"] and easy.doc_to_target(doc) == 1
    obqa = tasks[2]
    assert obqa.doc_to_text(obqa.test_docs()[0]) == "The sun is responsible for"


def test_hub_tasks_offline_say_to_pass_data_dir(tmp_path):
    with pytest.raises(EvalError, match=r"Offline, pass --data-dir DIR with the test files \(ARC-Easy-test.jsonl\)"):
        load_tasks(["arc_easy"], None, tmp_path)


def test_official_ai2_schema_reads_like_the_hf_schema(tmp_path):
    hf = [json.loads(line) for line in (EVAL_DATA / "ARC-Challenge-test.jsonl").read_text().splitlines()]
    ai2 = [{"id": d["id"], "question": {"stem": d["question"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(d["choices"]["text"], d["choices"]["label"])]},
        "answerKey": d["answerKey"]} for d in hf]
    path = tmp_path / "ARC-Challenge-Test.jsonl"  # AI2's capitalisation
    path.write_text("".join(json.dumps(d) + "\n" for d in ai2))
    assert read_questions(path, "question") == read_questions(EVAL_DATA / "ARC-Challenge-test.jsonl", "question")
    _, tasks = load_tasks(["arc_challenge"], tmp_path, tmp_path / "scratch")  # found case-insensitively
    assert len(tasks[0].test_docs()) == len(hf)


def test_obqa_official_schema_and_integer_labels(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps({"id": "7", "question": {"stem": "Heat makes ice", "choices": [
        {"text": "melt", "label": 1}, {"text": "grow", "label": 2}]}, "answerKey": 1}) + "\n")
    assert read_questions(path, "question_stem") == [
        {"id": "7", "question_stem": "Heat makes ice", "choices": {"text": ["melt", "grow"], "label": ["1", "2"]},
         "answerKey": "1"}]


def test_compare_reads_lm_eval_output_and_the_shipped_reference(tmp_path):
    native = tmp_path / "lm_eval.json"
    native.write_text(json.dumps({"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.01}}}))
    ref = load_results_file(Path(__file__).resolve().parents[2] / "eval" / "reference" / "qwen2.5-1.5b.json")
    assert ref["results"]["arc_easy"]["acc"] == 0.736 and ref["name"] == "Qwen2.5-1.5B (reported)"
    table = markdown_table([load_results_file(native), ref])
    assert "| ARC-Easy | acc | 50.0 ± 1.0 | 73.6 |" in table
    assert "| ARC-Challenge | acc | — | 43.7 |" in table


def test_default_output_paths(tmp_path):
    from eval.report import default_output_path

    assert default_output_path(tmp_path / "iter_000008", "run/iter_000008") == tmp_path / "iter_000008" / "eval_results.json"
    assert default_output_path(None, "Qwen/Qwen2.5-1.5B") == Path("eval_results") / "Qwen__Qwen2.5-1.5B.json"
