"""The model card (README.md) of an exported checkpoint: YAML metadata + what a reader needs.

Front matter through `huggingface_hub.ModelCardData` (license, library_name, tags, datasets and a
`model-index` built from the eval results), so the Hub parses it exactly as it parses its own
cards. The body: architecture, parameters, training (tokens, hardware, throughput, MFU, losses,
all read from the run's log.jsonl), the evaluation table and a usage snippet.
"""

from __future__ import annotations

from typing import Any

from .report import METRIC_LABELS, markdown_table
from .scoring import METRIC_DOCS
from .taskspec import TASKS

MODEL_INDEX_METRICS = {"acc": "accuracy", "acc_norm": "normalized accuracy", "acc_mean_logprob": "accuracy (mean log-prob per token)"}


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "unknown"
    if isinstance(value, (int, float)) and spec:
        return f"{value:{spec}}{suffix}"
    return f"{value}{suffix}"


def architecture(config: Any) -> dict[str, Any]:
    """Architecture fields from a `modeling.DecoderConfig` (ours, or converted from a native config)."""
    from modeling import count_parameters

    params = count_parameters(config)
    return {
        "layers": config.num_hidden_layers, "hidden size": config.hidden_size,
        "attention heads": config.num_attention_heads, "key/value heads": config.num_key_value_heads,
        "head dim": config.head_dim, "MLP": f"{config.mlp_type}, inner {config.intermediate_size}",
        "norm": config.norm_type, "positions": config.position_embedding
        + (f" (theta {config.rope_theta:g})" if config.position_embedding == "rope" else ""),
        "qk-norm": config.qk_norm, "tied embeddings": config.tie_word_embeddings,
        "vocabulary": config.vocab_size, "context length": config.max_position_embeddings,
        "parameters": f"{params['total']:,} ({params['non_embedding']:,} non-embedding)",
    }


FRAMEWORKS = {"transformers": "Transformers", "torch": "PyTorch", "accelerate": "Accelerate", "deepspeed": "DeepSpeed",
              "tokenizers": "Tokenizers", "datasets": "Datasets", "lm_eval": "lm-eval"}


def framework_versions() -> dict[str, str]:
    """{display name: version} of the installed frameworks (those present), as the HF Trainer's card lists them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist, label in FRAMEWORKS.items():
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def publishable_results(evaluation: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The task results fit for `model-index` (full official test sets), and why others are left out.

    model-index claims "this score on allenai/ai2_arc, test split": a --limit run, or local files of
    another size than the official split, would be a false claim (they still appear in the body).
    """
    settings = evaluation.get("settings", {})
    keep, skipped = {}, []
    for task, metrics in evaluation.get("results", {}).items():
        info = TASKS.get(task)
        n = metrics.get("n")
        if info is None:
            skipped.append(f"{task}: not a known benchmark")
        elif settings.get("limit"):
            skipped.append(f"{task}: evaluated with --limit {settings['limit']}")
        elif n != info.test_size:
            skipped.append(f"{task}: {n} questions, the official test split has {info.test_size}")
        else:
            keep[task] = metrics
    return keep, skipped


def _eval_results(results: dict[str, dict[str, Any]]) -> list[Any]:
    from huggingface_hub import EvalResult

    out = []
    for task, metrics in results.items():
        info = TASKS[task]
        for metric, label in MODEL_INDEX_METRICS.items():
            value = metrics.get(metric)
            if not isinstance(value, (int, float)):
                continue
            out.append(EvalResult(
                task_type="multiple-choice", task_name="Multiple Choice", dataset_type=info.hub_dataset,
                dataset_name=info.title, dataset_config=info.hub_config, dataset_split="test",
                dataset_args={"num_few_shot": 0}, metric_type=metric, metric_name=label,
                metric_value=round(100 * value, 2),
            ))
    return out


def render_model_card(
    *, repo_id: str, model_class: str, model_type: str, n_params: int, arch: dict[str, Any] | None,
    training: dict[str, Any], evaluation: dict[str, Any] | None, license: str, datasets: list[str],
    versions: dict[str, str] | None = None,
) -> str:
    """The card's text. `training` is eval.runinfo.training_summary's dict; `versions` the frameworks
    at export (framework_versions()), shown unless the run's own log recorded its versions."""
    from huggingface_hub import ModelCard, ModelCardData

    name = repo_id.split("/")[-1]
    publishable, skipped = publishable_results(evaluation) if evaluation else ({}, [])
    eval_results = _eval_results(publishable)
    data = ModelCardData(
        license=license, library_name="transformers", pipeline_tag="text-generation",
        tags=["llmstack", model_type, "causal-lm", "pretrained"], datasets=datasets or None,
        model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    lines = [
        f"# {name}", "",
        f"A {model_type} decoder-only language model ({model_class}, {n_params / 1e6:,.1f}M parameters) "
        "pre-trained with llmstack (HF Accelerate + DeepSpeed). It loads with plain "
        "`transformers`; no custom code.", "",
        "## Usage", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        'inputs = tokenizer("The capital of France is", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))", "```", "",
    ]
    if arch:
        lines += ["## Architecture", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in arch.items()] + [""]
    t = training
    data_desc = ", ".join(datasets) if datasets else (f"local corpus ({t['data_dir']})" if t.get("data_dir") else "unknown")
    parallelism = _fmt(t.get("distributed")) + (f", ZeRO stage {t['zero_stage']}" if t.get("zero_stage") is not None else "")
    mfu_pct = None if t.get("mfu") is None else 100 * t["mfu"]
    lines += [
        "## Training", "",
        "| | |", "|---|---|",
        f"| tokens trained | {_fmt(t.get('tokens'), ',')} |",
        f"| iterations | {_fmt(t.get('iter'), ',')} |",
        f"| sequence length | {_fmt(t.get('seq_len'))} |",
        f"| tokens per iteration | {_fmt(t.get('tokens_per_iter'), ',')} |",
        f"| precision | {_fmt(t.get('precision'))} |",
        f"| hardware | {_fmt(t.get('hardware'))} |",
        f"| parallelism | {parallelism} |",
        f"| throughput (median) | {_fmt(t.get('tokens_per_sec'), ',.0f', ' tokens/s')} |",
        f"| MFU (median) | {_fmt(mfu_pct, '.1f', '%')} |",
        f"| peak memory per device | {_fmt(t.get('mem_peak_gb'), '.1f', ' GB')} |",
        f"| final train loss | {_fmt(t.get('train_loss'), '.4f')} |",
        f"| last validation loss | {_fmt(t.get('val_loss'), '.4f')} |",
        f"| training data | {data_desc} |",
        "",
        "MFU counts 6·N + 12·L·H·S FLOPs per token (PaLM, appendix B) against the GPU's dense peak."
        if mfu_pct is not None else "MFU is unknown (CPU run, or no run log found beside the checkpoint).", "",
        "### Training hyperparameters", "",
    ]
    hparams = t.get("hyperparameters") or {}
    if hparams:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in hparams.items()] + [""]
    else:
        lines += ["Not recorded (no run log with a config record found beside the checkpoint).", ""]
    run_versions = t.get("versions")
    shown = run_versions or versions or {}
    if shown:
        lines += ["### Framework versions", "",
                  "As recorded by the training run:" if run_versions else "At export (the training run's log does not record them):",
                  ""] + [f"- {k} {v}" for k, v in shown.items()] + [""]
    lines += ["## Evaluation", ""]
    if evaluation:
        settings = evaluation.get("settings", {})
        source = "lm-eval-harness's Hub datasets" if settings.get("data") in (None, "hub") else "local JSONL copies of the test sets"
        lines += [
            f"Zero-shot, lm-eval-harness {settings.get('lm_eval_version') or ''} on {source}"
            + (f", **first {settings['limit']} questions per task only**" if settings.get("limit") else "")
            + ". Percentages, ± one standard error.", "",
            markdown_table([{"name": name, "results": evaluation["results"]}]), "",
        ]
        lines += [f"- **{METRIC_LABELS[m]}**: {doc}." for m, doc in METRIC_DOCS.items()] + [""]
        if skipped:
            lines += ["Left out of the card's `model-index` metadata (not full official test sets): "
                      + "; ".join(skipped) + ".", ""]
    else:
        lines += ["Not evaluated yet: run `python -m eval.harness CHECKPOINT` and export again.", ""]
    lines += [
        "## Limitations", "",
        "A base model pre-trained on a fixed corpus: it continues text, it does not follow instructions, "
        "and it reproduces the biases and errors of its training data. Not for use without further evaluation.", "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content
