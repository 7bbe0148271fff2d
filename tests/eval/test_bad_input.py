"""Bad input fails fast with an error naming the file (and line) and the fix; nothing is half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.checkpoint import resolve_checkpoint
from eval.data import read_questions
from eval.errors import EvalError
from eval.harness import main as harness_main
from eval.taskspec import local_task_configs, parse_task_names

EVAL_DATA = Path(__file__).resolve().parents[2] / "tests" / "assets" / "eval"
GOOD = {"id": "q1", "question": "What melts ice?", "choices": {"text": ["heat", "cold", "dark"], "label": ["A", "B", "C"]},
        "answerKey": "A"}


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# -- checkpoints -----------------------------------------------------------------------------------
def test_a_directory_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EvalError, match=r"is not a model: expected config.json .* it holds \['notes.txt'\]"):
        resolve_checkpoint(tmp_path)
    # The CLI prints the message (no traceback) and exits 2 before loading anything heavy.
    assert harness_main([str(tmp_path), "--data-dir", str(EVAL_DATA), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


def test_a_file_instead_of_a_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\0")
    with pytest.raises(EvalError, match="is a file, not a checkpoint"):
        resolve_checkpoint(f)


def test_a_config_json_that_is_not_a_transformers_config(tmp_path):
    from eval.checkpoint import load_model

    (tmp_path / "config.json").write_text('{"hidden": 3}')
    with pytest.raises(EvalError, match=r"config.json: no 'model_type' field"):
        load_model(resolve_checkpoint(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n oops}')
    with pytest.raises(EvalError, match=r"config.json:2: not valid JSON"):
        load_model(resolve_checkpoint(tmp_path))


def test_run_dir_picks_the_latest_complete_checkpoint(tiny_run):
    resolved = resolve_checkpoint(tiny_run)
    assert resolved.kind == "run" and resolved.checkpoint_dir.name == "iter_000008"  # not iter_000012.tmp
    assert resolved.run_dir == tiny_run and resolved.trainer_state["iter"] == 8
    inner = resolve_checkpoint(tiny_run / "checkpoints" / "iter_000004" / "model")  # the model/ dir itself
    assert inner.kind == "training-checkpoint" and inner.trainer_state["iter"] == 4


def test_run_dir_without_a_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "iter_000010.tmp").mkdir(parents=True)
    with pytest.raises(EvalError, match="has no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_checkpoint_without_tokenizer_files(tmp_path, checkpoint):
    from eval.checkpoint import find_tokenizer_dir

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(checkpoint / "model" / "config.json", model_dir)
    with pytest.raises(EvalError, match="no tokenizer files .* pass --tokenizer DIR"):
        find_tokenizer_dir(resolve_checkpoint(model_dir))


# -- data files ------------------------------------------------------------------------------------
def test_data_dir_missing_a_file(tmp_path, checkpoint, capsys):
    shutil.copy(EVAL_DATA / "ARC-Easy-test.jsonl", tmp_path)
    with pytest.raises(EvalError) as err:
        local_task_configs(["arc_easy", "openbookqa"], tmp_path, tmp_path / "scratch")
    assert f"{tmp_path} has no OpenBookQA-test.jsonl (needed for task openbookqa)" in str(err.value)
    assert "holds ['ARC-Easy-test.jsonl']" in str(err.value) and "--tasks" in str(err.value)
    out = tmp_path / "out" / "F.json"
    assert harness_main([str(checkpoint), "--data-dir", str(tmp_path), "--output", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # every missing file at once
    assert "no ARC-Challenge-test.jsonl (needed for task arc_challenge) and no OpenBookQA-test.jsonl" in err
    assert not out.exists()  # failed before evaluating: no results file


def test_malformed_jsonl_lines_are_reported_with_file_and_line(tmp_path):
    bad = _write(tmp_path / "ARC-Easy-test.jsonl", [GOOD, "", '{"id": "q2", "question": "unterminated', ["a list"],
                                                   {**GOOD, "id": "q4", "choices": {"text": ["x"], "label": ["A"]}},
                                                   {k: v for k, v in GOOD.items() if k != "question"}])
    with pytest.raises(EvalError) as err:
        read_questions(bad, "question")
    msg = str(err.value)
    assert msg.startswith(f"4 invalid line(s) in {bad}")
    assert f"{bad}:3: not valid JSON (Unterminated string" in msg
    assert f"{bad}:4: expected a JSON object, got list" in msg
    assert f"{bad}:5: a multiple-choice question needs at least 2 choices, got 1 (id q4)" in msg
    assert f"{bad}:6: no question" in msg
    assert '"choices": {"text": [...], "label": [...]}' in msg  # the fix: the expected schema


def test_answer_key_not_among_the_labels(tmp_path):
    bad = _write(tmp_path / "OpenBookQA-test.jsonl",
                 [{"id": "o1", "question_stem": "Sun is a", "choices": {"text": ["star", "planet"], "label": ["A", "B"]},
                   "answerKey": "A"},
                  {"id": "o2", "question_stem": "Moon is a", "choices": {"text": ["star", "satellite"], "label": ["A", "B"]},
                   "answerKey": "E"}])
    with pytest.raises(EvalError, match=rf"{bad}:2: answerKey 'E' is not among the choice labels \['A', 'B'\] \(id o2\)"):
        read_questions(bad, "question_stem")


def test_many_bad_lines_are_summarised(tmp_path):
    bad = _write(tmp_path / "x.jsonl", ["nope"] * 9)
    with pytest.raises(EvalError, match=r"9 invalid line\(s\)[\s\S]*and 4 more bad lines"):
        read_questions(bad, "question")


def test_empty_file(tmp_path):
    with pytest.raises(EvalError, match="holds no questions"):
        read_questions(_write(tmp_path / "x.jsonl", [""]), "question")


def test_unknown_task_name():
    with pytest.raises(EvalError, match="unknown task.*hellaswag.*choose from arc_easy, arc_challenge, openbookqa"):
        parse_task_names(["arc_easy,hellaswag"])
    assert parse_task_names(["openbookqa", "arc_easy,openbookqa"]) == ["openbookqa", "arc_easy"]


def test_bad_compare_file_fails_before_the_model_loads(tmp_path, checkpoint, capsys):
    bad = tmp_path / "ref.json"
    bad.write_text('{"name": "x"}')
    assert harness_main([str(checkpoint), "--data-dir", str(EVAL_DATA), "--compare", str(bad), "--device", "cpu"]) == 2
    assert f"{bad}: no 'results' object" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_a_pickled_model_with_code_in_it_is_refused_in_one_line(tmp_path, capsys):
    """transformers reads .bin weights with weights_only=True; what it refuses is reported as one line, and
    the payload never runs."""
    import torch
    from transformers import AutoTokenizer

    from modeling import DecoderConfig, DecoderForCausalLM

    DecoderForCausalLM(DecoderConfig.from_preset("tiny-llama")).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": _Payload()}, tmp_path / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "assets" / "tokenizer").save_pretrained(tmp_path)
    assert harness_main([str(tmp_path), "--data-dir", str(EVAL_DATA), "--device", "cpu", "--limit", "1"]) == 2
    captured = capsys.readouterr()
    assert "PAYLOAD RAN" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refused to load" in errors[0] and "Traceback" not in captured.err
