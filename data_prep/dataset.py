"""PackedTokenDataset: (input_ids, labels) windows from a prepared token memmap.

The sample stream, the contract training relies on
-------------------------------------------------
There is one global stream of samples s_0, s_1, s_2, ... per (data, split, seq_len, seed, shuffle),
independent of the number of processes and DataLoader workers:

  shuffle=True   s_i = the window starting at splitmix64(seed, i) mod (N - seq_len): random windows
                 over the N tokens, each a pure function of (seed, i). Endless by default (training).
  shuffle=False  s_i = the i-th non-overlapping block, tokens [i*T, i*T + T + 1). One pass over
                 (N - 1) // T blocks by default (validation); the tail shorter than a block is dropped.

Every sample is T + 1 tokens; input_ids = tokens[:-1], labels = tokens[1:] (already shifted, so
the loss is cross_entropy(logits.view(-1, V), labels.view(-1)) with no further shift), both int64.
Windows cross document boundaries; the EOS between documents tells the model where one ends.

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

Do not wrap these loaders with `accelerator.prepare`: sharding across ranks is already done here
(pass rank / world_size), and accelerate would shard a second time. Move batches to the device
yourself (`pin_memory=True` + `.to(device, non_blocking=True)`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .determinism import mix64
from .manifest import DTYPES, load_manifest

_STATE_VERSION = 1


class PackedTokenDataset(IterableDataset):
    """Windows of `seq_len + 1` tokens from DIR/{split}.bin as `(input_ids, labels)` int64 pairs.

    Args:
        path: a directory written by `python -m data_prep.prepare` (holds manifest.json).
        seq_len: tokens per sample (T); each sample reads T + 1 tokens.
        split: "train" or "val".
        shuffle: random windows (True) or sequential non-overlapping blocks (False).
        seed: seed of the random windows.
        rank, world_size: this process's share of the global stream (see the module docstring).
        infinite: endless stream; default True when shuffling, False (one pass) otherwise. A
            finite stream restarts from its beginning on every new iteration (so each evaluation
            sees the same batches) unless `load_state_dict` set a position.
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
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        if split not in self.manifest["splits"]:
            raise ValueError(
                f"{self.path} has no split {split!r}; available: {sorted(self.manifest['splits'])}. "
                "Prepare with --val-fraction > 0 (or a source with a validation split) for 'val'."
            )
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        info = self.manifest["splits"][split]
        self.num_tokens: int = int(info["tokens"])
        if self.num_tokens < seq_len + 1:
            raise ValueError(
                f"seq_len {seq_len} is longer than split {split!r} of {self.path}: a sample needs "
                f"seq_len + 1 = {seq_len + 1} tokens and the split has {self.num_tokens}. Use a "
                "shorter seq_len, or prepare more data (a larger --val-fraction for 'val')."
            )
        self.bin_path = self.path / info["file"]
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.seq_len, self.split, self.shuffle, self.seed = seq_len, split, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.infinite = shuffle if infinite is None else bool(infinite)
        # Random windows may start anywhere a full T + 1 window fits.
        self.num_windows = self.num_tokens - seq_len
        # One pass = as many samples as there are non-overlapping blocks (for both modes).
        self.samples_per_pass = (self.num_tokens - 1) // seq_len
        self._next_sample = 0  # global index of the next sample (the resume position g)
        self._resume_pending = False
        self._mm: np.memmap | None = None

    # --- reading -------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Pickling an np.memmap copies the whole array into the pickle; DataLoader workers reopen.
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    @property
    def tokens(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.bin_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._mm

    def window_start(self, index: int) -> int:
        """First token of global sample `index` (a pure function of the settings and `index`)."""
        if self.shuffle:
            return mix64(self.seed, index) % self.num_windows
        return (index % self.samples_per_pass) * self.seq_len

    def read_samples(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Global samples `indices` -> (input_ids, labels), each (len(indices), seq_len) int64."""
        starts = np.fromiter((self.window_start(i) for i in indices), dtype=np.int64, count=len(indices))
        windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]  # (B, T+1)
        t = torch.from_numpy(windows.astype(np.int64))
        # Contiguous copies: labels.view(-1) in the loss must not fail on a strided view.
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()  # (B, T), (B, T)

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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._begin_iteration()
        info = get_worker_info()
        # Under a plain DataLoader with workers, worker w takes every K-th of this rank's samples
        # (no duplicates); use build_dataloader for order- and resume-exact batches.
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        indices = itertools.islice(self.rank_indices(start), wid, None, nworkers)
        for k, i in enumerate(indices):
            if info is None:
                self._next_sample = start + (k + 1) * self.world_size
            x, y = self.read_samples([i])
            yield x[0], y[0]
        if info is None and not self.infinite:
            self._next_sample = 0

    # --- resuming ------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"split": self.split, "seq_len": self.seq_len, "shuffle": self.shuffle,
                "seed": self.seed, "num_tokens": self.num_tokens,
                "tokenizer_sha256": self.manifest["tokenizer"].get("sha256")}

    def state_dict(self) -> dict[str, Any]:
        """Position of the next sample in the global stream (world-size independent)."""
        return {"version": _STATE_VERSION, "next_sample": self._next_sample, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    """Iterable over (input_ids, labels) batches of shape (B, T), with exact state_dict resume."""

    def __init__(self, dataset: PackedTokenDataset, batch_size: int, num_workers: int,
                 pin_memory: bool, prefetch_factor: int | None) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        start = ds._begin_iteration()
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        # Fresh workers per iteration (no persistent_workers): they must start at `start`.
        loader = DataLoader(_BatchStream(ds, self.batch_size, start), batch_size=None,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, **kwargs)
        consumed = 0  # samples of this rank handed to the caller
        for x, y in loader:
            consumed += x.shape[0]
            ds._next_sample = start + consumed * ds.world_size  # counted in the main process
            yield x, y
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
    """A loader over `dataset` yielding (input_ids, labels) batches of shape (batch_size, seq_len).

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
