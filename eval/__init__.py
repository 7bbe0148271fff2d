"""Evaluation and publishing: lm-eval-harness on checkpoints (ARC-Easy, ARC-Challenge, OpenBookQA)
and pushing a checkpoint with its model card to the Hugging Face Hub.

    python -m eval.harness CHECKPOINT [--data-dir DIR] [--output FILE.json] [--compare REF.json ...]
    python -m eval.hub CHECKPOINT --repo-id ORG/NAME [--dry-run --out DIR] [--private]

    from eval import evaluate_model          # the in-training eval callback's entry point
    evaluate_model(model, tokenizer, data_dir="data/eval", limit=200)["results"]["arc_easy"]["acc"]
"""

from typing import Any

from .errors import EvalError

__all__ = ["EvalError", "evaluate_model"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m eval.hub` and `import eval.errors` need not pay for importing lm-eval.
    if name == "evaluate_model":
        from .harness import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
