"""training.run.build_data and Trainer.evaluate: the same validation batches at every evaluation (also
across a train-loader resume), loader defaults per device, verify_data and out-of-vocabulary ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_helpers import VOCAB, random_documents, write_data_dir
from data_prep.manifest import ManifestError
from training.config import TrainConfig
from training.run import build_data
from training.trainer import Trainer


def _build_data(cfg, cuda: bool):
    """build_data on rank 0 of 1, with the batch plan training computes."""
    return build_data(cfg, cfg.batch_plan(world_size=1), 0, cuda=cuda)


T = 16


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    return write_data_dir(tmp_path / "data", {"train": [random_documents(rng, 80), random_documents(rng, 60)],
                                              "val": [random_documents(rng, 40), random_documents(rng, 30)]})


def config(data: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data_dir": str(data), "seq_len": T, "micro_batch_size": 4, "eval_iters": 3,
                          "eval_interval": 5, **kw})


class RecordingModel(torch.nn.Module):
    """A tiny LM whose loss depends on every token: equal losses <=> equal batches (also recorded)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)
        self.seen: list[torch.Tensor] = []
        self.kwargs: list[dict] = []

    def forward(self, input_ids, shift_labels, **kwargs):
        self.seen.append(input_ids.clone())
        self.kwargs.append(kwargs)
        logits = self.head(self.emb(input_ids))
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), shift_labels.view(-1)))


def evaluator(cfg: TrainConfig, val_loader) -> SimpleNamespace:
    """What Trainer.evaluate reads of the trainer, on one CPU process (reduce over one rank = identity)."""
    acc = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, reduction: t)
    return SimpleNamespace(cfg=cfg, accelerator=acc, model=RecordingModel(), val_loader=val_loader)


def evaluate(trainer) -> tuple[float, list[torch.Tensor]]:
    trainer.model.seen.clear()
    loss = Trainer.evaluate(trainer)
    return loss, list(trainer.model.seen)


def test_every_evaluation_scores_the_same_batches_also_after_a_resume(data: Path) -> None:
    cfg = config(data)
    _, train_loader, val_loader = _build_data(cfg, cuda=False)
    trainer = evaluator(cfg, val_loader)
    first_loss, first = evaluate(trainer)
    assert len(first) == cfg.eval_iters  # eval_iters batches, from the start of the val split
    val_tokens = np.fromfile(data / "val" / "00000.ds", dtype="<u2").astype(np.int64)
    assert torch.equal(first[0][0], torch.from_numpy(val_tokens[:T]))

    it = iter(train_loader)
    for _ in range(7):
        next(it)
    assert _same(evaluate(trainer), (first_loss, first))
    state = train_loader.state_dict()

    # a resumed run: fresh loaders, the train loader's state restored, training continues
    _, resumed_train, resumed_val = _build_data(cfg, cuda=False)
    resumed_train.load_state_dict(state)
    next(iter(resumed_train))
    resumed = evaluator(cfg, resumed_val)
    for _ in range(2):
        assert _same(evaluate(resumed), (first_loss, first))


def _same(a, b) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_evaluation_with_fewer_val_batches_than_eval_iters(data: Path) -> None:
    cfg = config(data, eval_iters=10_000)
    _, _, val_loader = _build_data(cfg, cuda=False)
    loss, seen = evaluate(evaluator(cfg, val_loader))
    assert len(seen) == len(val_loader) and np.isfinite(loss)  # one pass, then it stops


def test_validation_under_document_masking_is_scored_with_document_positions(data: Path) -> None:
    cfg = config(data, document_masking=True)
    _, train_loader, val_loader = _build_data(cfg, cuda=False)
    assert len(next(iter(train_loader))) == len(next(iter(val_loader))) == 3  # (input_ids, labels, position_ids)
    trainer = evaluator(cfg, val_loader)
    evaluate(trainer)
    expected = [batch[2] for _, batch in zip(range(cfg.eval_iters), val_loader)]
    got = trainer.model.kwargs
    assert len(got) == cfg.eval_iters and all(k["document_masking"] for k in got)
    assert all(torch.equal(k["position_ids"], p) for k, p in zip(got, expected))


def test_loader_defaults_follow_the_device(data: Path) -> None:
    _, train, val = _build_data(config(data), cuda=False)
    assert (train.num_workers, train.pin_memory, val.num_workers) == (0, False, 0)
    _, train, val = _build_data(config(data), cuda=True)
    assert (train.num_workers, train.pin_memory, val.num_workers, val.pin_memory) == (2, True, 0, True)
    _, train, _ = _build_data(config(data, num_workers=1, pin_memory=False), cuda=True)
    assert (train.num_workers, train.pin_memory) == (1, False)


def corrupt(shard: Path, offset: int, value: int) -> None:
    """Same-size corruption: sizes still match the manifest, so only a hash or an id check sees it."""
    with open(shard, "r+b") as f:
        f.seek(2 * offset)
        f.write(np.array([value], dtype="<u2").tobytes())


def test_verify_data_catches_a_corrupt_shard_at_start(data: Path) -> None:
    _build_data(config(data, verify_data=True), cuda=False)
    corrupt(data / "train" / "00001.ds", offset=3, value=7)
    _build_data(config(data), cuda=False)  # off by default: sizes match, nothing read
    with pytest.raises(ManifestError, match=r"train/00001.ds is corrupt: its sha256 differs from the manifest's"):
        _build_data(config(data, verify_data=True), cuda=False)


def test_out_of_vocabulary_id_is_an_error_naming_the_shard_not_an_index_error(data: Path) -> None:
    corrupt(data / "train" / "00000.ds", offset=T + 2, value=60_000)
    _, train_loader, _ = _build_data(config(data), cuda=False)
    with pytest.raises(ManifestError, match=rf"train/00000.ds holds token id 60000 at token offset {T + 2}, but the "
                                            rf"tokenizer has {VOCAB} tokens"):
        for _ in zip(range(1000), train_loader):  # a permutation of all samples reaches the bad one
            pass
