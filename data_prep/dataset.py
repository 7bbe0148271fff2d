"""PackedTokenDataset: fixed packed samples from a prepared data directory, shuffled by a permutation.

The data: every shard of a split
--------------------------------
A split is a list of shards (manifest v2: `splits.{split}.shards`, files DIR/{split}/TTTTT_PPPPP.ds
with an optional .ds.index of cumulative document ends; manifest v1: one DIR/{split}.bin, no index;
docs/formats.md, section 1, has every field and the loader state). Shard s of n_s tokens holds (n_s - 1) // T fixed samples: sample j is tokens
[j*T, j*T + T + 1) of that shard, so consecutive samples share one token (the last label of one is
the first input of the next: every token but a shard's tail is predicted exactly once), and no
sample crosses a shard end. The split's samples are numbered 0 .. N-1, shard by shard.

The sample stream, the contract training relies on
-------------------------------------------------
There is one global stream s_0, s_1, s_2, ... per (data, split, seq_len, seed, shuffle),
independent of the number of processes and DataLoader workers. Stream index k is in epoch
e = k // N at position p = k % N:

  shuffle=True   s_k = sample perm_{seed,e}(p), where perm is a keyed pseudo-random bijection of
                 [0, N) (`determinism.Permutation`: a Feistel network with cycle-walking). Each
                 epoch serves every sample exactly once, each epoch in a new order, and s_k is a
                 pure function of (seed, k): no N-sized order array exists in any process.
                 Endless by default (training).
  shuffle=False  s_k = sample p: the samples in order. One pass (N samples) by default (validation).

Every sample is T + 1 tokens; input_ids = tokens[:-1], labels = tokens[1:] (already shifted, so
the loss is cross_entropy(logits.view(-1, V), labels.view(-1)) with no further shift), both int64.
Samples cross document boundaries; the EOS between documents tells the model where one ends. With
`document_positions=True` a sample is (input_ids, labels, position_ids), position_ids restarting
at 0 at every document start inside the sample (for document-masked attention).

Rank r of W takes s_{g+r}, s_{g+r+W}, s_{g+r+2W}, ... where g is the resume position (0 for a
fresh run). So with micro-batch b, optimizer step t on rank r holds global samples
g + r + W*(t*b + m), m < b, and the union over ranks is exactly s_{g + t*W*b} ... s_{g + (t+1)*W*b - 1}:
a 2-process run with micro-batch b sees in each step the same samples as a 1-process run with
micro-batch 2b (the training tests compare losses across world sizes on this property).

Resuming: `state_dict()` records g + (samples consumed per rank) * W, the global index of the
next sample, so a resumed run continues with exactly the next sample, even at another world size.
`build_dataloader` keeps that exact with num_workers > 0: the main process counts consumed
batches (prefetched-but-unconsumed batches are simply regenerated), and worker w of K produces
the rank's batches w, w+K, w+2K, ... which the DataLoader interleaves back in order.

Bad data: every batch's largest token id is checked against the tokenizer's vocabulary (one max()
per batch); an id out of range is an error naming the shard file and token offset (a corrupt shard
would otherwise surface as an IndexError, or a device-side assert, in the embedding). `verify_data`
re-hashes the shards against the manifest's sha256 (reads every byte: once, at start).

Do not wrap these loaders with `accelerator.prepare`: sharding across ranks is already done here
(pass rank / world_size), and accelerate would shard a second time. Move batches to the device
yourself (`pin_memory=True` + `.to(device, non_blocking=True)`).

One module (~430 lines): the sample stream, its rank split and its resume state are one contract
(above); the permutation is in determinism.py, the shard files in shards.py.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import resource
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .determinism import Permutation
from .manifest import DTYPES, MANIFEST_NAME, ManifestError, file_sha256, load_manifest

# 2: fixed samples under a per-epoch permutation (1 drew random windows with replacement, so a
# version-1 position names different data here).
_STATE_VERSION = 2
_FIX = "re-run `python -m data_prep.prepare` for this directory (with --overwrite)"
_INDEX_DTYPE = np.dtype("<u8")  # .ds.index: cumulative document ends, uint64 little-endian


@functools.cache
def _max_open_maps() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 1 << 16) // 4)


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The shards of `split` as [{file, index, tokens, sha256, max_token_id}], for manifest v1 or v2.

    v1 (one DIR/{split}.bin, no document index) reads as one shard whose index is None.
    """
    info = manifest["splits"][split]
    if "shards" in info:
        return [dict(s) for s in info["shards"]]
    return [{"file": info["file"], "index": None, "tokens": int(info["tokens"]),
             "sha256": info.get("sha256"), "max_token_id": info.get("max_token_id")}]


def verify_shards(path: str | Path, splits: list[str] | None = None, rank: int = 0, world_size: int = 1) -> int:
    """Re-hash the shards of `splits` (default: all) against the manifest's sha256; returns bytes read.

    Rank r of W hashes shards r, r+W, ... (each byte is read once per run, not once per rank); a
    mismatch raises on the rank that found it (the launcher then stops the others).
    """
    root = Path(path)
    manifest = load_manifest(root)
    shards = [s for split in (splits or sorted(manifest["splits"])) for s in split_shards(manifest, split)]
    read = 0
    for shard in shards[rank::world_size]:
        file = root / shard["file"]
        if shard.get("sha256") is None:
            raise ManifestError(f"{root / MANIFEST_NAME} has no sha256 for {shard['file']}, so verify_data "
                                f"cannot check it; {_FIX}, or set verify_data=false.")
        if file_sha256(file) != shard["sha256"]:
            raise ManifestError(f"{file} is corrupt: its sha256 differs from the manifest's; {_FIX}.")
        read += file.stat().st_size
    return read


class PackedTokenDataset(IterableDataset):
    """Fixed samples of `seq_len + 1` tokens from every shard of a split, as (input_ids, labels) int64.

    Args:
        path: a directory written by `python -m data_prep.prepare` (holds manifest.json).
        seq_len: tokens per sample (T); each sample reads T + 1 tokens.
        split: "train" or "val".
        shuffle: each epoch a new permutation of all samples (True) or the samples in order (False).
        seed: seed of the permutations.
        rank, world_size: this process's share of the global stream (see the module docstring).
        infinite: endless stream; default True when shuffling, False (one pass) otherwise. A
            finite stream restarts from its beginning on every new iteration (so each evaluation
            sees the same batches) unless `load_state_dict` set a position.
        document_positions: also yield position_ids that restart at 0 at each document start
            (from the shard's .index when it has one, else the token after each EOS).
    """

    def __init__(
        self,
        path: str | Path,
        seq_len: int,
        split: str = "train",
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool | None = None,
        document_positions: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.manifest = load_manifest(self.path)  # checks every shard's size and index length
        if split not in self.manifest["splits"]:
            raise ValueError(
                f"{self.path} has no split {split!r}; available: {sorted(self.manifest['splits'])}. "
                "Prepare with --val-fraction > 0 (or a source with a validation split) for 'val'."
            )
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.eos_id = self.manifest.get("eos_id")
        self.shards = split_shards(self.manifest, split)
        self._check_shards(document_positions)
        self.num_tokens: int = sum(int(s["tokens"]) for s in self.shards)
        # Samples per shard, and the first global sample of each shard (for bisect lookups).
        per_shard = [(int(s["tokens"]) - 1) // seq_len if int(s["tokens"]) > 0 else 0 for s in self.shards]
        self.shard_first_sample = list(itertools.accumulate(per_shard, initial=0))[:-1]
        self.samples_per_pass = sum(per_shard)  # N
        if self.samples_per_pass == 0:
            largest = max((int(s["tokens"]) for s in self.shards), default=0)
            raise ValueError(
                f"seq_len {seq_len} is longer than split {split!r} of {self.path}: a sample needs "
                f"seq_len + 1 = {seq_len + 1} tokens within one shard and the split's largest shard has "
                f"{largest}. Use a shorter seq_len, or prepare more data (a larger --val-fraction for 'val')."
            )
        self.seq_len, self.split, self.shuffle, self.seed = seq_len, split, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.infinite = shuffle if infinite is None else bool(infinite)
        self.document_positions = document_positions
        self._next_sample = 0  # global index of the next sample (the resume position g)
        self._resume_pending = False
        self._open: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()  # see _memmap
        self._perm: Permutation | None = None  # the current epoch's (cached: one epoch is long)
        self._perm_epoch = -1

    def _check_shards(self, document_positions: bool) -> None:
        """What `load_manifest` leaves to the reader: ids the tokenizer knows, a way to find documents."""
        for shard in self.shards:
            file = self.path / shard["file"]
            max_id = shard.get("max_token_id")
            if max_id is not None and int(max_id) >= self.vocab_size:
                raise ManifestError(
                    f"{file}: the manifest records token id {max_id} but the tokenizer has {self.vocab_size} "
                    f"tokens (ids 0..{self.vocab_size - 1}): the data was prepared with another tokenizer; {_FIX}."
                )
            if document_positions and not shard.get("index") and self.eos_id is None:
                raise ManifestError(f"{file} has no document index and the manifest no eos_id, so document "
                                    f"positions are unknown; {_FIX}.")

    # --- reading -------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Pickling an np.memmap copies the whole array into the pickle; DataLoader workers reopen.
        state = self.__dict__.copy()
        state["_open"] = collections.OrderedDict()
        return state

    def _memmap(self, file: str, dtype: np.dtype) -> np.ndarray:
        """The shard or index file `file`, memory-mapped, from a bounded LRU of open maps.

        Each map holds a file descriptor, and a shuffled stream touches every shard (hundreds to
        thousands at scale) from every DataLoader worker: keep at most a quarter of the process's
        descriptor limit open, closing the least recently used (the page cache keeps the data).
        """
        mm = self._open.get(file)
        if mm is not None:
            self._open.move_to_end(file)
            return mm
        if len(self._open) >= _max_open_maps():
            self._open.popitem(last=False)
        # A plain ndarray view: slicing an np.memmap runs its Python __array_finalize__ per slice.
        mm = self._open[file] = np.memmap(self.path / file, dtype=dtype, mode="r").view(np.ndarray)
        return mm

    def _tokens(self, s: int) -> np.ndarray:
        return self._memmap(self.shards[s]["file"], self.dtype)

    def _doc_ends(self, s: int) -> np.ndarray | None:
        index = self.shards[s].get("index")
        return self._memmap(index, _INDEX_DTYPE) if index else None

    def sample_of(self, index: int) -> int:
        """The sample (0 .. N-1) at global stream index `index`: a pure function of the settings."""
        epoch, position = divmod(index, self.samples_per_pass)
        if not self.shuffle:
            return position
        if self._perm is None or self._perm_epoch != epoch:
            self._perm, self._perm_epoch = Permutation(self.samples_per_pass, self.seed, epoch), epoch
        return self._perm(position)

    def locate(self, sample: int) -> tuple[int, int]:
        """Sample number -> (shard, first token in that shard)."""
        s = bisect.bisect_right(self.shard_first_sample, sample) - 1
        return s, (sample - self.shard_first_sample[s]) * self.seq_len

    def read_samples(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        """Global stream indices -> (input_ids, labels[, position_ids]), each (len(indices), T) int64."""
        T = self.seq_len
        where = [self.locate(self.sample_of(i)) for i in indices]
        rows = np.empty((len(where), T + 1), dtype=self.dtype)  # (B, T+1)
        for b, (s, start) in enumerate(where):
            rows[b] = self._tokens(s)[start : start + T + 1]
        if rows.size and int(rows.max()) >= self.vocab_size:  # one reduction per batch
            self._raise_bad_token(rows, where)
        # Each widened straight into its own contiguous array (labels.view(-1) in the loss must not
        # meet a strided view): two copies, not a widened copy plus two slices of it.
        out = (torch.from_numpy(rows[:, :-1].astype(np.int64)), torch.from_numpy(rows[:, 1:].astype(np.int64)))
        if self.document_positions:
            pos = np.stack([self._positions(s, start, rows[b, :T]) for b, (s, start) in enumerate(where)])
            out += (torch.from_numpy(pos),)  # (B, T)
        return out

    def _positions(self, s: int, start: int, tokens: np.ndarray) -> np.ndarray:
        """position_ids of the T input tokens at `start` of shard s: 0 at the sample's start and at
        every document start inside it, counting up in between."""
        T = self.seq_len
        ends = self._doc_ends(s)
        if ends is not None:  # documents starting at shard offsets in (start, start + T)
            lo = int(np.searchsorted(ends, start, side="right"))
            hi = int(np.searchsorted(ends, start + T, side="left"))
            starts = np.asarray(ends[lo:hi], dtype=np.int64) - start
        else:  # the token after an EOS starts a document
            starts = np.flatnonzero(tokens[:-1] == self.eos_id) + 1
        last_start = np.zeros(T, dtype=np.int64)
        last_start[starts] = starts
        np.maximum.accumulate(last_start, out=last_start)
        return np.arange(T, dtype=np.int64) - last_start

    def _raise_bad_token(self, rows: np.ndarray, where: list[tuple[int, int]]) -> None:
        b, col = np.unravel_index(int(np.argmax(rows >= self.vocab_size)), rows.shape)
        s, start = where[b]
        raise ManifestError(
            f"{self.path / self.shards[s]['file']} holds token id {int(rows[b, col])} at token offset "
            f"{start + col}, but the tokenizer has {self.vocab_size} tokens (ids 0..{self.vocab_size - 1}): "
            f"the shard is corrupt; {_FIX} (verify_data=true re-hashes every shard at start)."
        )

    def rank_indices(self, start: int) -> Iterator[int]:
        """This rank's global sample indices from resume position `start`, in order."""
        i = start + self.rank
        while self.infinite or i < self.samples_per_pass:
            yield i
            i += self.world_size

    def rank_samples(self) -> int:
        """Samples this rank yields in one full pass of a finite stream."""
        if self.infinite:
            raise TypeError("an infinite stream has no length")
        return max(0, -(-(self.samples_per_pass - self.rank) // self.world_size))

    def _begin_iteration(self) -> int:
        if self.infinite or self._resume_pending:
            self._resume_pending = False
            return self._next_sample
        self._next_sample = 0  # a finite pass starts over unless a state was loaded
        return 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        start = self._begin_iteration()
        info = get_worker_info()
        # Under a plain DataLoader with workers, worker w takes every K-th of this rank's samples
        # (no duplicates); use build_dataloader for order- and resume-exact batches.
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        indices = itertools.islice(self.rank_indices(start), wid, None, nworkers)
        for k, i in enumerate(indices):
            if info is None:
                self._next_sample = start + (k + 1) * self.world_size
            yield tuple(t[0] for t in self.read_samples([i]))
        if info is None and not self.infinite:
            self._next_sample = 0

    # --- resuming ------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "split": self.split, "seq_len": self.seq_len,
                "shuffle": self.shuffle, "seed": self.seed, "num_tokens": self.num_tokens,
                "num_samples": self.samples_per_pass,
                "tokenizer_sha256": self.manifest["tokenizer"].get("sha256")}

    def state_dict(self) -> dict[str, Any]:
        """Position of the next sample in the global stream (world-size independent)."""
        return {"next_sample": self._next_sample, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"cannot resume: the data-loader state has version {state.get('version')!r}, this loader "
                f"writes {_STATE_VERSION} (fixed samples under a permutation; version 1 drew random windows, "
                "so its position names other data). Start a fresh run, or resume with the code that saved it."
            )
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(
                    f"cannot resume: the data-loader state was saved with {key}={state.get(key)!r} "
                    f"but this dataset has {key}={value!r}. Resume with the same data and settings."
                )
        self._next_sample = int(state["next_sample"])
        self._resume_pending = True


class _BatchStream(IterableDataset):
    """The rank's batches, with batch b made by worker b mod K (DataLoader reassembles in order)."""

    def __init__(self, dataset: PackedTokenDataset, batch_size: int, start: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.start = dataset, batch_size, start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds, bsz = self.dataset, self.batch_size
        for b in itertools.count(wid, nworkers):
            indices = [self.start + ds.rank + k * ds.world_size for k in range(b * bsz, (b + 1) * bsz)]
            if not ds.infinite:
                indices = [i for i in indices if i < ds.samples_per_pass]
                if not indices:
                    return
            yield ds.read_samples(indices)


class ResumableLoader:
    """Iterable over (input_ids, labels[, position_ids]) batches of shape (B, T), with exact resume."""

    def __init__(self, dataset: PackedTokenDataset, batch_size: int, num_workers: int,
                 pin_memory: bool, prefetch_factor: int | None) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        ds = self.dataset
        start = ds._begin_iteration()
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        # Fresh workers per iteration (no persistent_workers): they must start at `start`.
        loader = DataLoader(_BatchStream(ds, self.batch_size, start), batch_size=None,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, **kwargs)
        consumed = 0  # samples of this rank handed to the caller
        for batch in loader:
            consumed += batch[0].shape[0]
            ds._next_sample = start + consumed * ds.world_size  # counted in the main process
            yield batch
        if not ds.infinite:
            ds._next_sample = 0

    def __len__(self) -> int:
        return -(-self.dataset.rank_samples() // self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset.state_dict(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The position is a global sample index, so a different batch size resumes exactly too.
        self.dataset.load_state_dict(state["dataset"])


def build_dataloader(
    dataset: PackedTokenDataset,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> ResumableLoader:
    """A loader over `dataset` yielding (input_ids, labels) batches of shape (batch_size, seq_len),
    plus position_ids when the dataset was built with `document_positions=True`.

    Batch order is identical for every num_workers, and `state_dict()` / `load_state_dict()`
    resume with the identical next batch. `len()` works for finite (shuffle=False) datasets.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    if prefetch_factor is not None and num_workers == 0:
        raise ValueError("prefetch_factor only applies with num_workers > 0; leave it None.")
    return ResumableLoader(dataset, batch_size, num_workers, pin_memory, prefetch_factor)
