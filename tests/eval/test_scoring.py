"""Scored right: lm-eval's log-likelihoods equal a direct computation with the model, and every
reported accuracy is the fraction of questions whose pick (under its rule) is the answer.

The prompts are rebuilt here from the fixture files, independently of lm-eval: ARC's
"Question: {question}\\nAnswer:" and OpenBookQA's bare question stem, continued by " " + choice
(lm-eval's target delimiter). Tokenisation as lm-eval does it for causal models: encode
context + continuation whole, and the continuation is what follows the encoded context.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

EVAL_DATA = Path(__file__).resolve().parents[2] / "tests" / "assets" / "eval"
FILES = {"arc_easy": "ARC-Easy-test.jsonl", "arc_challenge": "ARC-Challenge-test.jsonl", "openbookqa": "OpenBookQA-test.jsonl"}
TOL = 1e-4


def _prompt(task: str, doc: dict) -> str:
    return doc["question_stem"] if task == "openbookqa" else f"Question: {doc['question']}\nAnswer:"


def _split(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """(token ids of context + continuation, number of context tokens), as lm-eval splits them."""
    whole = tokenizer(context + continuation)["input_ids"]
    return whole, len(tokenizer(context)["input_ids"])


@torch.no_grad()
def _continuation_logprobs(model, pairs: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
    """Sum of log-softmax over the continuation tokens, for every (ids, n_ctx) in one right-padded
    batch: causal attention means the padding after a sequence cannot change its logits."""
    width = max(len(ids) for ids, _ in pairs)
    batch = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in pairs])
    logprobs = torch.log_softmax(model(batch).logits.float(), dim=-1)  # (B, T, V)
    out = []
    for row, (ids, n_ctx) in enumerate(pairs):
        positions = torch.arange(n_ctx - 1, len(ids) - 1)  # position t predicts token t+1
        picked = logprobs[row, positions, torch.tensor(ids[n_ctx:])]
        out.append((float(picked.sum()), len(ids) - n_ctx))
    return out


@pytest.fixture(scope="module")
def samples(harness_run) -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = {}
    for line in harness_run["json"].with_suffix(".samples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_task.setdefault(rec["task"], []).append(rec)
    return by_task


@pytest.fixture(scope="module")
def direct(checkpoint, tokenizer, samples) -> dict[str, list[dict]]:
    """Per task, per fixture question: our own log-likelihood and token count of every choice."""
    from modeling import DecoderForCausalLM

    model = DecoderForCausalLM.from_pretrained(checkpoint / "model").eval()  # ours, not the to_hf copy lm-eval used
    out = {}
    for task, name in FILES.items():
        docs = [json.loads(line) for line in (EVAL_DATA / name).read_text().splitlines() if line.strip()]
        pairs = [_split(tokenizer, _prompt(task, doc), " " + c) for doc in docs for c in doc["choices"]["text"]]
        scored = iter(_continuation_logprobs(model, pairs))
        rows = []
        for doc in docs:
            choice_scores = [next(scored) for _ in doc["choices"]["text"]]
            rows.append({"doc": doc, "context": _prompt(task, doc), "lls": [s[0] for s in choice_scores],
                         "n": [s[1] for s in choice_scores], "target": doc["choices"]["label"].index(doc["answerKey"])})
        out[task] = rows
    return out


@pytest.mark.parametrize("task", list(FILES))
def test_lm_eval_loglikelihoods_equal_direct_computation(task, samples, direct):
    logged = sorted(samples[task], key=lambda r: r["doc_id"])
    assert len(logged) == len(direct[task])
    for rec, ref in zip(logged, direct[task]):
        assert rec["id"] == ref["doc"]["id"]
        assert rec["context"] == ref["context"]
        assert rec["choices"] == ref["doc"]["choices"]["text"]
        assert rec["target"] == ref["target"]
        assert rec["n_tokens"] == ref["n"]
        assert rec["loglikelihoods"] == pytest.approx(ref["lls"], abs=TOL), rec["id"]


def _argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])


@pytest.mark.parametrize("task", list(FILES))
def test_accuracies_are_fractions_of_correct_picks(task, harness_run, direct):
    rows = direct[task]
    result = harness_run["payload"]["results"][task]
    acc = sum(_argmax(r["lls"]) == r["target"] for r in rows) / len(rows)
    # lm-eval's acc_norm divides by len(choice) in characters, which is the byte length for these ASCII files.
    acc_norm = sum(_argmax([ll / len(c.encode()) for ll, c in zip(r["lls"], r["doc"]["choices"]["text"])]) == r["target"]
                   for r in rows) / len(rows)
    seeds = sum(_argmax([ll / n for ll, n in zip(r["lls"], r["n"])]) == r["target"] for r in rows) / len(rows)
    assert result["acc"] == pytest.approx(acc, abs=1e-12)
    assert result["acc_norm"] == pytest.approx(acc_norm, abs=1e-12)
    assert result["acc_mean_logprob"] == pytest.approx(seeds, abs=1e-12)


def test_fixtures_are_ascii_and_vary_like_real_arc():
    """The acc_norm check above relies on ASCII; ARC mixes 3-5 choices and A-E / 1-4 labels."""
    n_choices, label_sets = set(), set()
    for name in FILES.values():
        text = (EVAL_DATA / name).read_text()
        assert text.isascii()
        for line in text.splitlines():
            doc = json.loads(line)
            n_choices.add(len(doc["choices"]["text"]))
            label_sets.add("".join(doc["choices"]["label"]))
    assert {3, 4, 5} <= n_choices
    assert {"ABCD", "1234", "ABC", "ABCDE"} <= label_sets
