"""PackedTokenDataset / build_dataloader: windows, ranks, workers, resume, validation."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import PackedTokenDataset, build_dataloader, check_vocab_compat, load_manifest
from data_prep.determinism import _splitmix64, mix64
from data_prep.manifest import ManifestError

T = 32


def memmap(prepared: Path, split: str = "train") -> np.ndarray:
    return np.fromfile(prepared / f"{split}.bin", dtype=np.uint16).astype(np.int64)


def take(iterable, n):
    return list(itertools.islice(iterable, n))


def rows(batches) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for x, _ in batches for r in x]


def test_splitmix64_reference_vector() -> None:
    # First output of the reference SplitMix64 (Steele et al.; Vigna's splitmix64.c) from state 0.
    assert _splitmix64(0) == 0xE220A8397B1DCDAF


def test_sequential_windows_match_memmap(prepared: Path) -> None:
    tokens = memmap(prepared, "val")
    ds = PackedTokenDataset(prepared, T, "val", shuffle=False)
    samples = list(ds)
    assert len(samples) == ds.samples_per_pass == (len(tokens) - 1) // T
    for k in (0, 1, len(samples) - 1):
        x, y = samples[k]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (T,)
        np.testing.assert_array_equal(x.numpy(), tokens[k * T : k * T + T])
        np.testing.assert_array_equal(y.numpy(), tokens[k * T + 1 : k * T + T + 1])
    assert len(list(ds)) == len(samples)  # a finite pass restarts on the next iteration


def test_random_windows_match_memmap(prepared: Path) -> None:
    tokens = memmap(prepared)
    ds = PackedTokenDataset(prepared, T, "train", shuffle=True, seed=3)
    for i, (x, y) in enumerate(take(ds, 50)):
        start = mix64(3, i) % (len(tokens) - T)
        np.testing.assert_array_equal(x.numpy(), tokens[start : start + T])
        np.testing.assert_array_equal(y.numpy(), tokens[start + 1 : start + T + 1])
    starts = {mix64(3, i) % (len(tokens) - T) for i in range(2000)}
    assert len(starts) > 1990 and max(starts) > 0.9 * len(tokens)  # spread over the whole split


def test_ranks_partition_the_global_stream(prepared: Path) -> None:
    for shuffle in (False, True):
        kw = dict(shuffle=shuffle, seed=1, infinite=False)
        one = [tuple(x.tolist()) for x, _ in PackedTokenDataset(prepared, T, "val", **kw)]
        per_rank = [[tuple(x.tolist()) for x, _ in PackedTokenDataset(prepared, T, "val", rank=r, world_size=3, **kw)]
                    for r in range(3)]
        assert sum(map(len, per_rank)) == len(one)
        merged = [s for group in itertools.zip_longest(*per_rank) for s in group if s is not None]
        assert merged == one  # rank r holds s_r, s_{r+3}, ...
        if not shuffle:  # sequential blocks: no token window is seen by two ranks
            assert not set(per_rank[0]) & set(per_rank[1])


def test_two_ranks_see_what_one_rank_with_double_batch_sees(prepared: Path) -> None:
    one = take(build_dataloader(PackedTokenDataset(prepared, T, seed=5), batch_size=8), 6)
    r0 = take(build_dataloader(PackedTokenDataset(prepared, T, seed=5, rank=0, world_size=2), batch_size=4), 6)
    r1 = take(build_dataloader(PackedTokenDataset(prepared, T, seed=5, rank=1, world_size=2), batch_size=4), 6)
    for step in range(6):
        assert sorted(rows([one[step]])) == sorted(rows([r0[step], r1[step]]))
        assert not set(rows([r0[step]])) & set(rows([r1[step]]))


def test_deterministic_and_seeded(prepared: Path) -> None:
    a = rows(take(build_dataloader(PackedTokenDataset(prepared, T, seed=7), 4), 5))
    b = rows(take(build_dataloader(PackedTokenDataset(prepared, T, seed=7), 4), 5))
    c = rows(take(build_dataloader(PackedTokenDataset(prepared, T, seed=8), 4), 5))
    assert a == b and a != c


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_match_dataset_stream(prepared: Path, num_workers: int) -> None:
    ds = PackedTokenDataset(prepared, T, seed=2)
    expected = rows([(x[None], y[None]) for x, y in take(PackedTokenDataset(prepared, T, seed=2), 40)])
    loader = build_dataloader(ds, 4, num_workers=num_workers)
    batches = take(loader, 10)
    assert all(x.shape == y.shape == (4, T) for x, y in batches)
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
    assert rows(batches) == expected  # worker count never changes the order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_resumes_with_the_identical_next_batch(prepared: Path, num_workers: int) -> None:
    ds = PackedTokenDataset(prepared, T, seed=4)
    loader = build_dataloader(ds, 4, num_workers=num_workers, prefetch_factor=4 if num_workers else None)
    it = iter(loader)
    take(it, 7)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON checkpoint
    expected = take(it, 3)
    del it
    fresh = build_dataloader(PackedTokenDataset(prepared, T, seed=4), 4, num_workers=num_workers)
    fresh.load_state_dict(state)
    got = take(fresh, 3)
    assert rows(got) == rows(expected)
    assert fresh.state_dict()["dataset"]["next_sample"] == state["dataset"]["next_sample"] + 12


def test_resume_at_another_world_size(prepared: Path) -> None:
    single = build_dataloader(PackedTokenDataset(prepared, T, seed=9), 8)
    it = iter(single)
    take(it, 3)
    state = single.state_dict()
    next_global = next(it)
    halves = []
    for r in range(2):
        loader = build_dataloader(PackedTokenDataset(prepared, T, seed=9, rank=r, world_size=2), 4)
        loader.load_state_dict(state)
        halves.append(next(iter(loader)))
    assert sorted(rows([next_global])) == sorted(rows(halves))


def test_finite_loader_len_and_full_pass(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, T, "val", shuffle=False)
    loader = build_dataloader(ds, 5, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-ds.samples_per_pass // 5)
    assert sum(x.shape[0] for x, _ in batches) == ds.samples_per_pass
    assert rows(batches) == rows(list(build_dataloader(ds, 5)))  # repeatable: same batches again
    tokens = memmap(prepared, "val")
    np.testing.assert_array_equal(batches[1][0][0].numpy(), tokens[5 * T : 6 * T])


def test_direct_iteration_state(prepared: Path) -> None:
    ds = PackedTokenDataset(prepared, T, seed=1, rank=1, world_size=2)
    it = iter(ds)
    take(it, 5)
    state = ds.state_dict()
    assert state["next_sample"] == 10
    nxt = next(it)
    ds2 = PackedTokenDataset(prepared, T, seed=1, rank=1, world_size=2)
    ds2.load_state_dict(state)
    assert torch.equal(next(iter(ds2))[0], nxt[0])
    bad = dict(state, seq_len=64)
    with pytest.raises(ValueError, match="saved with seq_len=64 but this dataset has seq_len=32"):
        ds2.load_state_dict(bad)


def test_seq_len_longer_than_split(prepared: Path) -> None:
    n = load_manifest(prepared)["splits"]["val"]["tokens"]
    with pytest.raises(ValueError, match=rf"seq_len {n} is longer than split 'val'.*needs .* {n + 1} tokens and the split has {n}"):
        PackedTokenDataset(prepared, n, "val")
    PackedTokenDataset(prepared, n - 1, "val")  # exactly one window fits


def test_bad_dataset_arguments(prepared: Path) -> None:
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'val'\]"):
        PackedTokenDataset(prepared, T, "test")
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        PackedTokenDataset(prepared, T, rank=2, world_size=2)
    with pytest.raises(ValueError, match="prefetch_factor only applies"):
        build_dataloader(PackedTokenDataset(prepared, T), 4, prefetch_factor=2)


@pytest.fixture
def copy_of(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(prepared, out)
    return out


def test_truncated_bin_is_a_clear_error(copy_of: Path) -> None:
    m = load_manifest(copy_of)
    size = m["splits"]["train"]["bytes"]
    with open(copy_of / "train.bin", "r+b") as f:
        f.truncate(size - 6)
    with pytest.raises(ManifestError, match=rf"train.bin is truncated or corrupt: .* = {size} bytes, the file has {size - 6} bytes; re-run `python -m data_prep.prepare`"):
        PackedTokenDataset(copy_of, T)


def test_corrupt_bin_detected_by_hash(copy_of: Path) -> None:
    with open(copy_of / "val.bin", "r+b") as f:
        f.write(b"\x07\x07")
    load_manifest(copy_of)  # sizes still match
    with pytest.raises(ManifestError, match="val.bin is corrupt: its sha256 differs.*re-run"):
        load_manifest(copy_of, verify_hash=True)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest.json in .*python -m data_prep.prepare"):
        load_manifest(tmp_path)


def test_check_vocab_compat(prepared: Path) -> None:
    m = load_manifest(prepared)
    check_vocab_compat(m, 2048)
    check_vocab_compat(m, 2176)  # padded up: fine
    with pytest.raises(ValueError, match=r"has 2048 tokens, but the model's vocab_size is 2000.*vocab_size >= 2048.*re-prepare"):
        check_vocab_compat(m, 2000)
