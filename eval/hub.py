"""Publish a checkpoint on the Hugging Face Hub in the native transformers format, with a model card.

    python -m eval.hub runs/demo --repo-id me/llama-1.5b-demo                 # export + upload
    python -m eval.hub runs/demo --repo-id me/llama-1.5b-demo --dry-run --out hub/demo   # build only
    python -m eval.hub runs/demo/checkpoints/iter_004000 --repo-id org/m --private --eval-results r.json

The folder holds what plain `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
need (config.json, model.safetensors, generation_config.json, tokenizer files) and README.md: YAML
metadata (license, library_name, tags, datasets, model-index with the eval scores) and the
architecture, parameter count, tokens trained, hardware, MFU and eval table, read from the run's
log.jsonl (found by walking up from the checkpoint) and the eval results JSON (--eval-results, or
eval_results.json next to the checkpoint as `python -m eval.harness` writes it).

The token comes from HF_TOKEN or the saved login (`hf auth login`); it is never printed or logged.
--endpoint (or HF_ENDPOINT) points at another Hub, e.g. a local test server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from data_prep.atomic import atomic_write_dir
from .checkpoint import (
    ResolvedCheckpoint, as_native, find_tokenizer_dir, load_raw_model, load_tokenizer, resolve_checkpoint,
)
from .errors import EvalError, run_cli
from .harness import DTYPES
from .model_card import architecture, framework_versions, render_model_card
from .report import load_results_file
from .runinfo import training_summary

log = logging.getLogger("eval.hub")
_REPO_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(p and set(p) <= _REPO_ID_CHARS for p in parts):
        raise EvalError(f"--repo-id {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.').")
    return repo_id


def find_eval_results(resolved: ResolvedCheckpoint, explicit: str | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The eval results payload: --eval-results, else eval_results.json beside the checkpoint."""
    candidates = [Path(explicit)] if explicit else [
        d / "eval_results.json" for d in (resolved.local_dir, Path(resolved.model)) if d is not None and resolved.kind != "hub"
    ]
    for path in candidates:
        if path.is_file():
            load_results_file(path)  # validates the structure (clear error on a bad file)
            return json.loads(path.read_text(encoding="utf-8")), path
        if explicit:
            raise EvalError(f"--eval-results {path}: no such file. Run `python -m eval.harness CHECKPOINT --output {path}` first.")
    return None, None


def _config_for_card(model: Any) -> Any:
    """A DecoderConfig describing the model (ours as is; native GPT-2/LLaMA/Qwen3 converted), or None."""
    import modeling

    if isinstance(model, modeling.DecoderForCausalLM):
        return model.config
    try:
        from modeling.hf_export import from_hf_config

        return from_hf_config(model.config)
    except (modeling.NotExportableError, AttributeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# The export folder
# ----------------------------------------------------------------------------------------------
def trained_context(training: dict[str, Any], model: Any) -> int | None:
    """The context the model was trained at: the run's seq_len, else the config's position limit."""
    if isinstance(training.get("seq_len"), int):
        return training["seq_len"]
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    return None


def _portable_tokenizer_config(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    # transformers 5 records its internal class "TokenizersBackend"; the public alias
    # PreTrainedTokenizerFast loads the same tokenizer.json in transformers 4.x and 5.x.
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # Loading options of *this* machine (e.g. offline mode) leak into the saved config; a Hub user
    # must not inherit local_files_only=True.
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def build_export(
    resolved: ResolvedCheckpoint, out: Path, *, repo_id: str, tokenizer_dir: str | None = None,
    dtype: str = "auto", eval_results: str | None = None, license: str = "apache-2.0",
    datasets: Sequence[str] = (),
) -> Path:
    """Write the upload folder `out` (atomically: a failure leaves no half-built folder)."""
    import torch
    import modeling
    from modeling.hf_export import finish_export

    evaluation, eval_path = find_eval_results(resolved, eval_results)
    if evaluation is None:
        log.warning("no eval results found beside %s: the model card will have no scores "
                    "(run `python -m eval.harness` first or pass --eval-results)", resolved.spec)
    else:
        log.info("eval results: %s", eval_path)
    tokenizer = load_tokenizer(tokenizer_dir or find_tokenizer_dir(resolved))
    torch_dtype = None if dtype == "auto" else getattr(torch, DTYPES[dtype])
    model = load_raw_model(resolved, dtype=torch_dtype)
    card_config = _config_for_card(model)
    training = training_summary(resolved.run_dir, resolved.trainer_state)
    all_datasets = list(dict.fromkeys([*datasets, *training["datasets"]]))

    max_length = trained_context(training, model)

    def fill(folder: Path) -> None:
        if isinstance(model, modeling.DecoderForCausalLM):
            as_native(model, resolved.model)  # raises EvalError naming the field if not exportable
            modeling.export_hf(model, folder, tokenizer=tokenizer, max_length=max_length)
        else:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            finish_export(folder, tokenizer, max_length)  # special-token ids, model_max_length
        _portable_tokenizer_config(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        card = render_model_card(
            repo_id=repo_id, model_class=(config.get("architectures") or ["?"])[0], model_type=config["model_type"],
            n_params=sum(p.numel() for p in model.parameters()),
            arch=architecture(card_config) if card_config is not None else None,
            training=training, evaluation=evaluation, license=license, datasets=all_datasets,
            versions=framework_versions(),
        )
        (folder / "README.md").write_text(card, encoding="utf-8")

    return atomic_write_dir(out, fill)


# ----------------------------------------------------------------------------------------------
# Upload
# ----------------------------------------------------------------------------------------------
def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def require_token() -> str:
    """The token huggingface_hub will use (HF_TOKEN, else the saved login); EvalError if there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise EvalError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run).")
    return token


def upload(folder: Path, repo_id: str, *, private: bool, endpoint: str | None, commit_message: str) -> str:
    """create_repo (exist_ok) + upload_folder; returns the repo URL. Errors never echo the token."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    token = require_token()  # held only to scrub it from error messages
    api = HfApi(endpoint=endpoint)  # the token is found again by huggingface_hub itself, never passed around
    try:
        # private=None (not False) without --private: the organisation's default visibility applies.
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    except OfflineModeIsEnabled as e:
        raise EvalError("HF_HUB_OFFLINE=1 is set: unset it to upload, or use --dry-run.") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = {401: "the token is invalid or expired", 403: "the token may not write to this namespace",
                404: "the namespace does not exist"}.get(status, "see the message")
        raise EvalError(_scrub(f"upload to {repo_id} failed (HTTP {status}: {hint}): {e}", token)) from None
    except (OSError, ValueError) as e:  # connection errors, malformed responses
        raise EvalError(_scrub(f"upload to {repo_id} failed: {type(e).__name__}: {e}", token)) from None
    return str(url)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.hub",
        description="Export a checkpoint to the native transformers format with a model card, and push it to the Hub.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="training run dir (latest checkpoint), checkpoint iter_XXXXXX/, or model dir")
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the Hub model repository")
    p.add_argument("--out", help="folder to build (default: a temporary folder; with --dry-run: hub_export/NAME)")
    p.add_argument("--dry-run", action="store_true", help="build the folder, upload nothing")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--eval-results", help="results JSON from eval.harness (default: eval_results.json beside the checkpoint)")
    p.add_argument("--license", default="apache-2.0", help="license id for the card's metadata (default apache-2.0)")
    p.add_argument("--dataset", action="append", default=[], metavar="HUB_ID",
                   help="training dataset for the card's metadata (repeatable; also read from the data manifest)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="weights dtype to publish (default: as saved)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: the one saved with the checkpoint)")
    p.add_argument("--commit-message", default="Upload model exported by llmstack eval.hub")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv)


def _main(args: argparse.Namespace) -> int:
    repo_id = check_repo_id(args.repo_id)
    resolved = resolve_checkpoint(args.checkpoint)
    if resolved.kind == "hub":
        raise EvalError(f"{args.checkpoint}: no such local checkpoint (eval.hub publishes local checkpoints).")
    kwargs = dict(repo_id=repo_id, tokenizer_dir=args.tokenizer, dtype=args.dtype, eval_results=args.eval_results,
                  license=args.license, datasets=args.dataset)
    if args.dry_run:
        out = Path(args.out) if args.out else Path("hub_export") / repo_id.split("/")[1]
        build_export(resolved, out, **kwargs)
        print(f"built {out} ({', '.join(sorted(p.name for p in out.iterdir()))}); --dry-run: nothing uploaded")
        return 0
    require_token()  # before minutes of export work
    with tempfile.TemporaryDirectory(prefix="llmstack-hub-") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "export"
        build_export(resolved, out, **kwargs)
        endpoint = args.endpoint or os.environ.get("HF_ENDPOINT")
        url = upload(out, repo_id, private=args.private, endpoint=endpoint, commit_message=args.commit_message)
    print(f"uploaded {out.name if not args.out else out} to {url}" + (" (private)" if args.private else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
