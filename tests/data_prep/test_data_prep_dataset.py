"""PackedTokenDataset / build_dataloader: fixed samples, permutations, shards, ranks, workers,
resume, document positions, bad data.

Most tests run on small manifest-v2 directories written here with numpy (`write_data_dir`), so
they do not depend on `prepare`'s output format; the `prepared` tests go through `prepare` itself
(whatever layout it writes), so the writer and this reader meet.
"""

from __future__ import annotations

import collections
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import PackedTokenDataset, build_dataloader, check_vocab_compat, load_manifest
from data_prep.dataset import verify_shards
from data_prep.determinism import Permutation, _splitmix64
from data_prep.manifest import ManifestError
from data_helpers import VOCAB, random_documents, write_data_dir

T = 32


# --- fixtures: v2 directories written directly (tests/data_helpers.py) -------------------------------

@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: 3 shards of unequal length (one shorter than a sample); val: 2 shards."""
    rng = np.random.default_rng(0)
    train = [random_documents(rng, 120), random_documents(rng, 75), [rng.integers(2, VOCAB, size=10)],
             random_documents(rng, 40)]
    val = [random_documents(rng, 30), random_documents(rng, 25)]
    return write_data_dir(tmp_path_factory.mktemp("sharded"), {"train": train, "val": val}, bos=True)


def shard_tokens(data_dir: Path, split: str) -> list[np.ndarray]:
    """Each shard's tokens, read straight from the manifest (v1: one {split}.bin; v2: its shards)."""
    m = json.loads((data_dir / "manifest.json").read_text())
    info = m["splits"][split]
    dt = np.dtype("<u2" if m["dtype"] == "uint16" else "<u4")
    files = [s["file"] for s in info["shards"]] if "shards" in info else [info["file"]]
    return [np.fromfile(data_dir / f, dtype=dt).astype(np.int64) for f in files]


def fixed_samples(data_dir: Path, split: str, seq_len: int = T) -> list[tuple[int, ...]]:
    """Direct computation of the contract: sample j of a shard = tokens [j*T, j*T+T+1), shard by shard."""
    out = []
    for tokens in shard_tokens(data_dir, split):
        out += [tuple(tokens[j * seq_len : j * seq_len + seq_len + 1].tolist())
                for j in range(max(0, (len(tokens) - 1) // seq_len))]
    return out


def take(iterable, n):
    return list(itertools.islice(iterable, n))


def rows(batches) -> list[tuple[int, ...]]:
    return [tuple(r.tolist()) for x, *_ in batches for r in x]


def full(sample) -> tuple[int, ...]:
    x, y = sample[0], sample[1]
    return tuple(x.tolist()) + (int(y[-1]),)


# --- the permutation ------------------------------------------------------------------------------

def test_splitmix64_reference_vector() -> None:
    # First output of the reference SplitMix64 (Steele et al.; Vigna's splitmix64.c) from state 0.
    assert _splitmix64(0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 256, 257, 1000, 4099])
def test_permutation_is_a_bijection(n: int) -> None:
    p = Permutation(n, seed=3, epoch=1)
    assert sorted(p(i) for i in range(n)) == list(range(n))
    with pytest.raises(IndexError):
        p(n)


def test_permutation_depends_on_seed_and_epoch() -> None:
    n = 1000
    orders = [[Permutation(n, s, e)(i) for i in range(n)] for s, e in ((0, 0), (0, 1), (1, 0))]
    assert orders[0] != list(range(n))
    assert orders[0] != orders[1] and orders[0] != orders[2] and orders[1] != orders[2]
    # well mixed: neighbours land far apart, not in runs
    assert np.mean(np.abs(np.diff(orders[0]))) > n / 5


# --- fixed samples over shards --------------------------------------------------------------------

def test_multi_shard_samples_never_cross_shard_ends(sharded: Path) -> None:
    ds = PackedTokenDataset(sharded, T, "train", shuffle=False)
    lengths = [len(t) for t in shard_tokens(sharded, "train")]
    assert len(lengths) == 4 and lengths[2] < T + 1  # one shard holds no sample at all
    assert ds.samples_per_pass == sum((n - 1) // T for n in lengths)
    samples = [full(s) for s in ds]
    assert samples == fixed_samples(sharded, "train")  # in order, each within its shard


def test_shuffled_epoch_covers_every_sample_once(sharded: Path) -> None:
    expected = collections.Counter(fixed_samples(sharded, "train"))
    n = sum(expected.values())
    ds = PackedTokenDataset(sharded, T, "train", shuffle=True, seed=11)
    stream = [full(s) for s in take(ds, 2 * n)]
    epoch1, epoch2 = stream[:n], stream[n:]
    assert collections.Counter(epoch1) == expected == collections.Counter(epoch2)  # every token once per epoch
    assert epoch1 != fixed_samples(sharded, "train")  # shuffled
    assert epoch1 != epoch2  # each epoch its own order
    other = [full(s) for s in take(PackedTokenDataset(sharded, T, "train", shuffle=True, seed=12), n)]
    assert other != epoch1


def test_open_shards_are_bounded(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each open map holds a file descriptor: at most _max_open_maps() per process, same samples."""
    expected = [full(s) for s in take(PackedTokenDataset(sharded, T, "train", seed=4, document_positions=True), 60)]
    import data_prep.dataset

    monkeypatch.setattr(data_prep.dataset, "_max_open_maps", lambda: 2)
    ds = PackedTokenDataset(sharded, T, "train", seed=4, document_positions=True)  # tokens + index maps
    got = []
    for s in take(ds, 60):
        got.append(full(s))
        assert len(ds._open) <= 2
    assert got == expected


def test_shuffled_finite_stream_is_one_epoch(sharded: Path) -> None:
    ds = PackedTokenDataset(sharded, T, "val", shuffle=True, seed=1, infinite=False)
    loader = build_dataloader(ds, 5)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert collections.Counter(rows(batches)) == collections.Counter(s[:-1] for s in fixed_samples(sharded, "val"))


def test_sequential_samples_match_prepare_output(prepared: Path) -> None:
    """Through `prepare` (whatever layout it writes today): the reader and the writer meet."""
    expected = fixed_samples(prepared, "val")
    ds = PackedTokenDataset(prepared, T, "val", shuffle=False)
    samples = list(ds)
    assert len(samples) == ds.samples_per_pass == len(expected)
    for k in (0, 1, len(samples) - 1):
        x, y = samples[k]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (T,)
        assert full(samples[k]) == expected[k]
        assert torch.equal(x[1:], y[:-1])
    assert len(list(ds)) == len(samples)  # a finite pass restarts on the next iteration
    train = PackedTokenDataset(prepared, T, "train", shuffle=True, seed=3)
    n = train.samples_per_pass
    assert collections.Counter(full(s) for s in take(train, n)) == collections.Counter(fixed_samples(prepared, "train"))


# --- ranks, workers, resume -----------------------------------------------------------------------

def test_ranks_partition_the_global_stream(sharded: Path) -> None:
    for shuffle in (False, True):
        kw = dict(shuffle=shuffle, seed=1, infinite=False)
        one = [full(s) for s in PackedTokenDataset(sharded, T, "val", **kw)]
        per_rank = [[full(s) for s in PackedTokenDataset(sharded, T, "val", rank=r, world_size=3, **kw)]
                    for r in range(3)]
        assert sum(map(len, per_rank)) == len(one)
        merged = [s for group in itertools.zip_longest(*per_rank) for s in group if s is not None]
        assert merged == one  # rank r holds s_r, s_{r+3}, ...
        assert not set(per_rank[0]) & set(per_rank[1])  # fixed samples: no sample seen by two ranks


def test_two_ranks_see_what_one_rank_with_double_batch_sees(sharded: Path) -> None:
    one = take(build_dataloader(PackedTokenDataset(sharded, T, seed=5), batch_size=8), 6)
    r0 = take(build_dataloader(PackedTokenDataset(sharded, T, seed=5, rank=0, world_size=2), batch_size=4), 6)
    r1 = take(build_dataloader(PackedTokenDataset(sharded, T, seed=5, rank=1, world_size=2), batch_size=4), 6)
    for step in range(6):
        assert sorted(rows([one[step]])) == sorted(rows([r0[step], r1[step]]))
        assert not set(rows([r0[step]])) & set(rows([r1[step]]))


def test_deterministic_and_seeded(sharded: Path) -> None:
    a = rows(take(build_dataloader(PackedTokenDataset(sharded, T, seed=7), 4), 5))
    b = rows(take(build_dataloader(PackedTokenDataset(sharded, T, seed=7), 4), 5))
    c = rows(take(build_dataloader(PackedTokenDataset(sharded, T, seed=8), 4), 5))
    assert a == b and a != c


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_match_dataset_stream(sharded: Path, num_workers: int) -> None:
    ds = PackedTokenDataset(sharded, T, seed=2)
    expected = rows([(x[None], y[None]) for x, y in take(PackedTokenDataset(sharded, T, seed=2), 40)])
    loader = build_dataloader(ds, 4, num_workers=num_workers)
    batches = take(loader, 10)
    assert all(x.shape == y.shape == (4, T) for x, y in batches)
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
    assert rows(batches) == expected  # worker count never changes the order


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_dict_resumes_with_the_identical_next_batch(sharded: Path, num_workers: int) -> None:
    ds = PackedTokenDataset(sharded, T, seed=4)
    loader = build_dataloader(ds, 4, num_workers=num_workers, prefetch_factor=4 if num_workers else None)
    it = iter(loader)
    take(it, 7)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON checkpoint
    expected = take(it, 3)
    del it
    fresh = build_dataloader(PackedTokenDataset(sharded, T, seed=4), 4, num_workers=num_workers)
    fresh.load_state_dict(state)
    got = take(fresh, 3)
    assert rows(got) == rows(expected)
    assert fresh.state_dict()["dataset"]["next_sample"] == state["dataset"]["next_sample"] + 12


def test_resume_at_another_world_size(sharded: Path) -> None:
    single = build_dataloader(PackedTokenDataset(sharded, T, seed=9), 8)
    it = iter(single)
    take(it, 3)
    state = single.state_dict()
    next_global = next(it)
    halves = []
    for r in range(2):
        loader = build_dataloader(PackedTokenDataset(sharded, T, seed=9, rank=r, world_size=2), 4)
        loader.load_state_dict(state)
        halves.append(next(iter(loader)))
    assert sorted(rows([next_global])) == sorted(rows(halves))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_saved_at_world_size_two_continues_at_world_size_one(sharded: Path, num_workers: int) -> None:
    """Across an epoch boundary: the global stream is the same whatever the world size."""
    n = PackedTokenDataset(sharded, T).samples_per_pass
    steps = n // 8 - 1  # stop one step before the epoch ends: the resumed batches straddle it
    reference = rows(take(build_dataloader(PackedTokenDataset(sharded, T, seed=6), 8), steps + 4))
    states = []
    for r in range(2):
        loader = build_dataloader(PackedTokenDataset(sharded, T, seed=6, rank=r, world_size=2), 4,
                                  num_workers=num_workers)
        it = iter(loader)
        take(it, steps)
        states.append(loader.state_dict())
        del it
    assert states[0]["dataset"] == states[1]["dataset"]  # one integer, the same on every rank
    resumed = build_dataloader(PackedTokenDataset(sharded, T, seed=6), 8, num_workers=num_workers)
    resumed.load_state_dict(states[0])
    assert rows(take(resumed, 4)) == reference[steps * 8:]


def test_finite_loader_len_and_full_pass(sharded: Path) -> None:
    ds = PackedTokenDataset(sharded, T, "val", shuffle=False)
    loader = build_dataloader(ds, 5, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-ds.samples_per_pass // 5)
    assert sum(x.shape[0] for x, _ in batches) == ds.samples_per_pass
    assert rows(batches) == rows(list(build_dataloader(ds, 5)))  # repeatable: same batches again
    assert rows(batches) == [s[:-1] for s in fixed_samples(sharded, "val")]


def test_finite_stream_restarts_even_after_the_train_loader_resumes(sharded: Path) -> None:
    """Validation batches are the same at every evaluation, also after the train loader's state moved."""
    train = build_dataloader(PackedTokenDataset(sharded, T, seed=3), 4)
    val = build_dataloader(PackedTokenDataset(sharded, T, "val", shuffle=False), 4)
    first = rows(take(val, 3))
    it = iter(train)
    take(it, 5)
    state = train.state_dict()
    assert rows(take(val, 3)) == first
    fresh = build_dataloader(PackedTokenDataset(sharded, T, seed=3), 4)
    fresh.load_state_dict(state)
    next(iter(fresh))
    assert rows(take(val, 3)) == first


def test_direct_iteration_state(sharded: Path) -> None:
    ds = PackedTokenDataset(sharded, T, seed=1, rank=1, world_size=2)
    it = iter(ds)
    take(it, 5)
    state = ds.state_dict()
    assert state["next_sample"] == 10
    nxt = next(it)
    ds2 = PackedTokenDataset(sharded, T, seed=1, rank=1, world_size=2)
    ds2.load_state_dict(state)
    assert torch.equal(next(iter(ds2))[0], nxt[0])
    bad = dict(state, seq_len=64)
    with pytest.raises(ValueError, match="saved with seq_len=64 but this dataset has seq_len=32"):
        ds2.load_state_dict(bad)
    with pytest.raises(ValueError, match="state has version 1, this loader writes 2.*Start a fresh run"):
        ds2.load_state_dict(dict(state, version=1))


# --- document positions ---------------------------------------------------------------------------

def direct_positions(docs: list[np.ndarray], start: int, bos: bool) -> list[int]:
    """position_ids of tokens [start, start + T) by walking the document list: the offset from the
    document's first token, or from the sample's first token when the document began before it."""
    out, doc_start = [], 0
    for d in docs:
        doc_end = doc_start + len(d) + 1 + bos
        for tok in range(max(doc_start, start), min(doc_end, start + T)):
            out.append(tok - max(doc_start, start))
        doc_start = doc_end
    return out


@pytest.mark.parametrize("index", [True, False], ids=["from_index", "from_eos"])
def test_document_positions_match_the_document_list(tmp_path: Path, index: bool) -> None:
    rng = np.random.default_rng(5)
    shards = [random_documents(rng, 60, max_len=45), random_documents(rng, 50, max_len=45)]
    data = write_data_dir(tmp_path / "d", {"train": shards}, bos=True, index=index)
    ds = PackedTokenDataset(data, T, "train", shuffle=True, seed=2, document_positions=True)
    batches = list(itertools.islice(build_dataloader(ds, 6, num_workers=0), -(-ds.samples_per_pass // 6)))
    checked = restarts = 0
    for x, y, pos in batches:
        assert pos.shape == x.shape and pos.dtype == torch.int64
        for b in range(x.shape[0]):
            # which fixed sample is this row? (its shard and start), then compare with the documents
            s, start = next((s, j * T) for s, t in enumerate(shard_tokens(data, "train"))
                            for j in range((len(t) - 1) // T)
                            if np.array_equal(t[j * T : j * T + T], x[b].numpy()))
            assert pos[b].tolist() == direct_positions(shards[s], start, bos=True)
            restarts += int((pos[b][1:] == 0).sum())
            checked += 1
    assert checked >= ds.samples_per_pass and restarts > checked  # documents do start inside samples
    plain = build_dataloader(PackedTokenDataset(data, T, "train", seed=2), 6)
    assert len(next(iter(plain))) == 2  # the default stays (input_ids, labels)


# --- errors and bad data --------------------------------------------------------------------------

def test_seq_len_longer_than_split(sharded: Path) -> None:
    n = max(len(t) for t in shard_tokens(sharded, "val"))
    with pytest.raises(ValueError, match=rf"seq_len {n} is longer than split 'val'.*needs .* {n + 1} tokens within "
                                         rf"one shard and the split's largest shard has {n}"):
        PackedTokenDataset(sharded, n, "val")
    assert PackedTokenDataset(sharded, n - 1, "val", shuffle=False).samples_per_pass == 1  # exactly one fits


def test_bad_dataset_arguments(sharded: Path) -> None:
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'val'\]"):
        PackedTokenDataset(sharded, T, "test")
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        PackedTokenDataset(sharded, T, rank=2, world_size=2)
    with pytest.raises(ValueError, match="prefetch_factor only applies"):
        build_dataloader(PackedTokenDataset(sharded, T), 4, prefetch_factor=2)


@pytest.fixture
def copy_of(sharded: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(sharded, out)
    return out


def test_truncated_shard_is_a_clear_error(copy_of: Path) -> None:
    shard = copy_of / "train" / "00001.ds"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 6)
    with pytest.raises(ManifestError, match=rf"00001.ds is truncated or corrupt: .* = {size} bytes, the file has "
                                            rf"{size - 6} bytes; re-run `python -m data_prep.prepare`"):
        PackedTokenDataset(copy_of, T)


def corrupt(shard: Path, offset: int, value: int = 0xFFFF) -> None:
    """Same-size corruption: one uint16 overwritten in place (sizes still match the manifest)."""
    with open(shard, "r+b") as f:
        f.seek(2 * offset)
        f.write(np.array([value], dtype="<u2").tobytes())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_out_of_vocabulary_token_names_the_file_and_offset(copy_of: Path, num_workers: int) -> None:
    corrupt(copy_of / "train" / "00001.ds", offset=T * 3 + 5)
    ds = PackedTokenDataset(copy_of, T, shuffle=False)  # constructing is fine: sizes match
    with pytest.raises(ManifestError, match=rf"train/00001.ds holds token id 65535 at token offset {T * 3 + 5}, but the "
                                            rf"tokenizer has {VOCAB} tokens .*the shard is corrupt; re-run .*verify_data"):
        list(build_dataloader(ds, 4, num_workers=num_workers))


def test_verify_shards_rehashes_against_the_manifest(copy_of: Path) -> None:
    assert verify_shards(copy_of) == sum(f.stat().st_size for f in copy_of.glob("*/*.ds"))
    corrupt(copy_of / "val" / "00000.ds", offset=7, value=3)  # an in-vocabulary id: only the hash sees it
    verify_shards(copy_of, ["train"])
    with pytest.raises(ManifestError, match=r"val/00000.ds is corrupt: its sha256 differs from the manifest's; re-run"):
        verify_shards(copy_of)
    # ranks split the work: only the rank holding the corrupt shard finds it
    found = []
    for r in range(2):
        try:
            verify_shards(copy_of, rank=r, world_size=2)
        except ManifestError:
            found.append(r)
    assert len(found) == 1


def first_file(data_dir: Path, split: str) -> Path:
    info = json.loads((data_dir / "manifest.json").read_text())["splits"][split]
    return data_dir / (info["shards"][0]["file"] if "shards" in info else info["file"])


def test_prepare_output_truncated_or_corrupt(prepared: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    val = first_file(data, "val")
    with open(val, "r+b") as f:
        f.write(b"\x07\x07")  # same size, other bytes
    PackedTokenDataset(data, T, "val")  # sizes still match
    with pytest.raises(ManifestError, match=rf"{val.name} is corrupt: its sha256 differs.*re-run"):
        load_manifest(data, verify_hash=True)
    with pytest.raises(ManifestError, match=rf"{val.name} is corrupt: its sha256 differs.*re-run"):
        verify_shards(data)
    train = first_file(data, "train")
    size = train.stat().st_size
    with open(train, "r+b") as f:
        f.truncate(size - 6)
    with pytest.raises(ManifestError, match=rf"{train.name} is truncated or corrupt"):
        PackedTokenDataset(data, T)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest.json in .*python -m data_prep.prepare"):
        load_manifest(tmp_path)


def test_check_vocab_compat(prepared: Path) -> None:
    m = load_manifest(prepared)
    check_vocab_compat(m, 2048)
    check_vocab_compat(m, 2176)  # padded up: fine
    with pytest.raises(ValueError, match=r"has 2048 tokens, but the model's vocab_size is 2000.*vocab_size >= 2048.*re-prepare"):
        check_vocab_compat(m, 2000)


def test_model_vocab_size_pads_the_tokenizer_to_128():
    from data_prep import model_vocab_size

    for tokens, padded in ((50257, 50304), (2048, 2048), (2049, 2176), (151_669, 151_680)):
        assert model_vocab_size({"tokenizer": {"vocab_size": tokens}}) == padded
