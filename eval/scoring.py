"""Turn lm-eval's output into our per-task results, adding accuracy by mean log-prob per answer token.

lm-eval scores a multiple-choice question by the log-likelihood of each choice given the prompt:
`acc` picks the highest total log-likelihood, `acc_norm` the highest log-likelihood per character
of the choice text. A third rule picks the highest MEAN log-prob per answer token (the rule the
reported figures in eval/reference/ were scored by, on "Question: X\\nAnswer: Y"). We recompute that
from the per-choice log-likelihoods lm-eval logged (`log_samples=True`) and the token count of each
continuation, tokenised exactly as lm-eval did (its own `_encode_pair`), so no second forward pass
is needed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

METRIC_DOCS: dict[str, str] = {
    "acc": "lm-eval acc: the choice with the highest total log-likelihood is correct",
    "acc_norm": "lm-eval acc_norm: highest log-likelihood divided by the choice's length in characters",
    "acc_mean_logprob": (
        "the choice with the highest mean log-prob per answer token is correct, from lm-eval's logged per-choice "
        "log-likelihoods on lm-eval's prompt (ARC: 'Question: X\\nAnswer:'; OpenBookQA: the bare "
        "question stem, as in lm-eval's task)"
    ),
}
METRICS: tuple[str, ...] = tuple(METRIC_DOCS)


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of a mean, as lm-eval computes it (sample std with n-1, over sqrt(n))."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def continuation_token_count(lm: Any, context: str, continuation: str) -> int:
    """How many tokens lm-eval scored for `continuation` (mirrors HFLM.loglikelihood)."""
    if context == "":
        enc = lm.tok_encode(continuation, add_special_tokens=False)
        return len(enc) - 1 if enc and enc[0] == lm.prefix_token_id else len(enc)
    _, continuation_enc = lm._encode_pair(context, continuation)
    return len(continuation_enc)


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=lambda i: xs[i])  # first maximum, like numpy.argmax


def score_samples(lm: Any, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per question: choices, log-likelihoods, token counts and each rule's pick."""
    out = []
    for s in samples:
        contexts_conts = [tuple(a) for a in s["arguments"]]
        lls = [float(r[0]) for r in s["filtered_resps"]]
        # The continuation is lm-eval's target delimiter " " + the choice text; acc_norm divides by
        # the length of the choice text alone.
        choices = [cont[1:] if cont.startswith(" ") else cont for _, cont in contexts_conts]
        n_tokens = [continuation_token_count(lm, ctx, cont) for ctx, cont in contexts_conts]
        mean_lp = [ll / n if n else -math.inf for ll, n in zip(lls, n_tokens)]
        n_chars = [len(c) for c in choices]
        target = int(s["target"])
        doc = s.get("doc", {})
        out.append({
            "doc_id": s["doc_id"],
            "id": doc.get("id"),
            "context": contexts_conts[0][0] if contexts_conts else "",
            "choices": choices,
            "target": target,
            "loglikelihoods": lls,
            "n_tokens": n_tokens,
            "pred": _argmax(lls),
            "pred_norm": _argmax([ll / max(c, 1) for ll, c in zip(lls, n_chars)]),
            "pred_mean_logprob": _argmax(mean_lp),
            "lm_eval_acc": s.get("acc"),
            "lm_eval_acc_norm": s.get("acc_norm"),
        })
    return out


def _float_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for an undefined stderr
        return None
    return None if math.isnan(v) else v


def task_results(name: str, lm_results: dict[str, Any], scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Our per-task result: acc, acc_norm (from lm-eval) and acc_mean_logprob (highest mean log-prob
    per answer token), each with its standard error, and the number of questions."""
    r = lm_results["results"][name]
    hits = [1.0 if q["pred_mean_logprob"] == q["target"] else 0.0 for q in scored]
    n = lm_results.get("n-samples", {}).get(name, {})
    return {
        "acc": _float_or_none(r.get("acc,none")),
        "acc_stderr": _float_or_none(r.get("acc_stderr,none")),
        "acc_norm": _float_or_none(r.get("acc_norm,none")),
        "acc_norm_stderr": _float_or_none(r.get("acc_norm_stderr,none")),
        "acc_mean_logprob": sum(hits) / len(hits) if hits else None,
        "acc_mean_logprob_stderr": mean_stderr(hits),
        "n": n.get("effective", len(scored)),
        "n_total": n.get("original", len(scored)),
    }
