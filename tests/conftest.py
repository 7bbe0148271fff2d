"""Shared test set-up: deterministic torch, the repo root importable, offline HF."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


if str(REPO / "tests") not in sys.path:  # shared helpers (tests/train_helpers.py) importable from any test
    sys.path.insert(0, str(REPO / "tests"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The shipped Shakespeare sample tokenized with the shipped BPE (train + 5% val)."""
    from train_helpers import prepare_demo_data

    return prepare_demo_data(tmp_path_factory.mktemp("data") / "demo")
