"""data_prep: corpus -> tokenizer -> token shards (datatrove .ds + .index) + manifest.json -> batches.

    python -m data_prep.tokenizer train --input CORPUS --vocab-size N --out TOKDIR
    python -m data_prep.prepare --input CORPUS --tokenizer TOKDIR --out DATA --seq-len T --val-fraction F
    python -m data_prep.prepare ... --max-tokens 117e9 --tasks 512 --workers 64 [--node-rank R --num-nodes N]
    python -m data_prep.prepare --out DATA --finalize
    python -m benchmarks.data_bench  (data_prep.bench: the old name)

    from data_prep import PackedTokenDataset, build_dataloader, load_manifest, check_vocab_compat
"""

from __future__ import annotations

from typing import Any

__all__ = ["PackedTokenDataset", "build_dataloader", "load_manifest", "check_vocab_compat", "model_vocab_size"]

_EXPORTS = {
    "PackedTokenDataset": "dataset",
    "build_dataloader": "dataset",
    "load_manifest": "manifest",
    "check_vocab_compat": "manifest",
    "model_vocab_size": "manifest",
}


def __getattr__(name: str) -> Any:
    # Lazy: `python -m data_prep.prepare` should not pay for importing torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
