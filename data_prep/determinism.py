"""Counter-based hashing: a pure function of (seed, index) with no hidden RNG state.

Both the train/val carve-out in `prepare` and the shuffled sample order of `PackedTokenDataset`
(`Permutation`) need "the i-th draw" without replaying draws 0..i-1: that is what makes them
resumable at any point and identical across world sizes and DataLoader worker counts. SplitMix64 (Steele, Lea & Flood 2014,
"Fast splittable pseudorandom number generators") is the standard finaliser for that job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where the vectorised helpers run, not at import
    import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix64(seed: int, index: int) -> int:
    """A uniformly distributed 64-bit integer determined only by (seed, index)."""
    # Key the stream by the seed first so streams for different seeds do not overlap shifted.
    z = (_splitmix64(seed & _MASK64) + (index & _MASK64) * _GOLDEN) & _MASK64
    return _splitmix64(z)


def _splitmix64(z: int) -> int:
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def unit_interval(seed: int, index: int) -> float:
    """A float in [0, 1) determined only by (seed, index) (53 bits of `mix64`)."""
    return (mix64(seed, index) >> 11) * (1.0 / (1 << 53))


def unit_interval_array(seed: int, indices: "np.ndarray") -> "np.ndarray":
    """Vectorised `unit_interval` over an array of indices (bit-identical results).

    numpy's uint64 arithmetic wraps modulo 2**64 exactly like the masked Python version; used on
    hot paths where a Python call per document would cost more than the tokenizer.
    """
    import numpy as np

    z = np.asarray(indices, dtype=np.uint64) * np.uint64(_GOLDEN)
    z = z + np.uint64(_splitmix64(seed & _MASK64))
    z = z + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Permutation:
    """A pseudo-random bijection of [0, n) keyed by (seed, epoch), evaluated one index at a time.

    The shuffled sample order of `PackedTokenDataset`: the k-th sample of an epoch is `perm(k)`,
    a pure function of (seed, epoch, k), so no n-sized shuffle array exists anywhere (n ~ 57M
    samples at 117B tokens / 2048 would be 460 MB per rank and DataLoader worker) and any position
    is reached without replaying the ones before it. Construction: a balanced Feistel network over
    the smallest even-bit domain [0, 2**bits) >= n, whose round function is SplitMix64 keyed per
    round (4+ rounds of a pseudo-random function give a pseudo-random permutation: Luby & Rackoff
    1988), restricted to [0, n) by cycle-walking (Black & Rogaway 2002): re-encrypt until the value
    lands below n. The domain is < 4n, so a lookup costs under 4 encryptions on average.
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: int, epoch: int = 0) -> None:
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}.")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        self._half = (bits + 1) // 2  # balanced halves: round the domain up to an even bit count
        self._mask = (1 << self._half) - 1
        epoch_key = mix64(seed, epoch)
        self._keys = [mix64(epoch_key, r) for r in range(self.ROUNDS)]

    def _encrypt(self, x: int) -> int:
        half, mask = self._half, self._mask
        left, right = x >> half, x & mask
        for key in self._keys:
            # round function: _splitmix64(right ^ key), inlined (the loader's hot path)
            z = ((right ^ key) + _GOLDEN) & _MASK64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            left, right = right, left ^ ((z ^ (z >> 31)) & mask)
        return (left << half) | right

    def __call__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} is outside [0, {self.n}).")
        x = self._encrypt(index)
        while x >= self.n:  # cycle-walk: the cycle through `index` returns below n
            x = self._encrypt(x)
        return x
