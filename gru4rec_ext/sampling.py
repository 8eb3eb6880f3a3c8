"""Negative sampling for training (SPEC section 4): items drawn with probability ∝ count^alpha.

Samples are drawn in large blocks on the training device with Walker's alias method (per sample:
a uniform item i and a uniform u, result i if u < prob[i] else alias[i]: several times cheaper
than a binary search of the cumulative table), from a seeded `torch.Generator`, into a cache that
is refilled in place: on the CPU by the compiled `gru4rec::alias_sample_` (one pass), elsewhere by a
handful of vectorised tensor ops that draw the same numbers (`ops.alias_sample`).

A training step takes its samples through an offset that lives on the device (a 0-dim int64
tensor): `take(k)` gathers cache[offset : offset + k] into a static buffer (the same tensor every
call) and advances the offset, with device ops only, so a captured CUDA graph that replays the
step reads new samples each replay. The host only mirrors the offset to decide, outside the step
(`reserve(k)`), when the cache must be refilled; it never reads the device.
"""
from __future__ import annotations

import numpy as np
import torch

from .ops.alias_sample import alias_sample_

DEFAULT_BLOCK_SIZE = 1 << 20


def alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of a distribution p [N] (sums to 1): (prob float64 [N], alias int64 [N]).

    Drawing i uniformly, then keeping i with probability prob[i] or else taking alias[i], samples p
    exactly (up to float rounding). Items with p = 0 are never drawn.
    """
    n = len(p)
    scaled = p * n
    prob = np.zeros(n)
    alias = np.full(n, int(np.argmax(p)), dtype=np.int64)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        lo, hi = small.pop(), large.pop()
        prob[lo], alias[lo] = scaled[lo], hi
        scaled[hi] = (scaled[hi] + scaled[lo]) - 1.0
        (small if scaled[hi] < 1.0 else large).append(hi)
    for i in large + small:  # leftovers are ~1 up to rounding; zero-probability items stay at 0
        prob[i] = 1.0 if p[i] > 0 else 0.0
    return prob, alias


class PopularitySampler:
    """Draws item indices with probability proportional to ``counts ** alpha``.

    Args:
        counts: training item counts, shape [N] (any numeric tensor or sequence), all >= 0 and
            at least one > 0.
        alpha: exponent in [0, 1] (0: uniform over items, 1: the data distribution).
        device: the device the samples live on (the training device).
        block_size: how many samples one refill draws (at least k).
        seed: seed of the sampler's own `torch.Generator` (None: a random seed).

    Two ways to get samples, which share one sequence (the same seed gives the same samples):
      * `draw(k)`: the next k samples as a new tensor;
      * `reserve(k)` on the host, then `take(k)` in the step: the next k samples in a static
        buffer, read through the device-side offset (graph-safe; see the module docstring).
    """

    def __init__(self, counts, alpha: float, device=None, block_size: int = DEFAULT_BLOCK_SIZE,
                 seed: int | None = None):
        counts = torch.as_tensor(counts)
        if counts.dim() != 1 or counts.numel() == 0:
            raise ValueError(f"counts must be a non-empty 1-d tensor, got shape {tuple(counts.shape)}")
        counts = counts.to(torch.float64)
        if bool((counts < 0).any()) or not bool((counts > 0).any()):
            raise ValueError("counts must be >= 0 with at least one positive count")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.alpha = float(alpha)
        self.block_size = int(block_size)
        self.n_items = counts.numel()
        weights = torch.where(counts > 0, counts.pow(self.alpha), torch.zeros_like(counts))
        self._p = weights / weights.sum()
        prob, alias = alias_table(self._p.numpy())
        self._prob = torch.from_numpy(prob).to(torch.float32).to(self.device)
        self._alias = torch.from_numpy(alias).to(self.device)
        # log q for the logq correction (SPEC section 4), unnormalised: log count for in-batch
        # targets, alpha * log count for the sampled columns.
        log_count = torch.log(counts.clamp_min(1e-30))
        self._log_count = log_count.to(torch.float32).to(self.device)
        self._log_weight = (self.alpha * log_count).to(torch.float32).to(self.device)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._cache = torch.empty(0, dtype=torch.int64, device=self.device)
        self._pos = 0  # the host's mirror of the device offset (samples handed out of the cache)
        self._offset = torch.zeros((), dtype=torch.int64, device=self.device)  # the step reads from here
        self._arange = torch.empty(0, dtype=torch.int64, device=self.device)   # 0..k-1
        self._buffer = torch.empty(0, dtype=torch.int64, device=self.device)   # take(k)'s output
        self._offset_behind = False  # take_view moved the host position without the device offset

    def _refill(self, k: int) -> None:
        """Draw a new block of max(block_size, k) samples into the cache (in place when its size
        is unchanged) and set the offset to 0."""
        size = max(self.block_size, k)
        if self._cache.numel() != size:
            self._cache = torch.empty(size, dtype=torch.int64, device=self.device)
        alias_sample_(self._cache, self._prob, self._alias, self.generator)  # in place
        self._offset.zero_()
        self._pos = 0

    def reserve(self, k: int) -> None:
        """Host side of a step's draw: make the next `k` samples available from the device offset,
        refilling the cache first when they do not fit. Reads nothing from the device."""
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if self._pos + k > self._cache.numel():
            self._refill(k)
        self._pos += k

    def take(self, k: int) -> torch.Tensor:
        """Device side of a step's draw (after `reserve(k)`): the next `k` samples, int64 [k], in
        the sampler's static buffer (the same tensor every call, overwritten in place), gathered
        at the device offset, which then advances by k. Only device ops: safe in a CUDA graph."""
        k = int(k)
        self.sync_offset(k)
        if self._arange.numel() != k:  # the first call for this k (never inside a captured step)
            self._arange = torch.arange(k, dtype=torch.int64, device=self.device)
            self._buffer = torch.empty(k, dtype=torch.int64, device=self.device)
        torch.index_select(self._cache, 0, self._arange + self._offset, out=self._buffer)
        self._offset += k
        return self._buffer

    def sync_offset(self, k: int) -> None:
        """After `reserve(k)`: set the device offset to the host's position if `take_view` moved
        the position without it (a no-op otherwise, as in every step of a captured graph)."""
        if self._offset_behind:
            self._offset.fill_(self._pos - int(k))
            self._offset_behind = False

    def take_view(self, k: int) -> torch.Tensor:
        """`take(k)` without device ops (after `reserve(k)`): the next `k` samples as a view of the
        cache, valid until the next `reserve`. For eager steps on the CPU, where take's gather and
        offset update cost more than the view; the device offset catches up at the next `take`."""
        self._offset_behind = True
        return self._cache.narrow(0, self._pos - int(k), int(k))

    def draw(self, k: int) -> torch.Tensor:
        """The next `k` samples, int64 [k] on the sampler's device (a new tensor)."""
        self.reserve(k)
        return self.take(k).clone()

    def log_q(self, targets: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """log q of the candidates cat(targets, samples), float32 [B+K] (SPEC section 4).

        q is unnormalised: the training count for the in-batch targets, count^alpha for the
        sampled items.
        """
        return torch.cat([self._log_count.index_select(0, targets),
                          self._log_weight.index_select(0, samples)])

    def log_q_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log count, alpha * log count), float32 [N] each: `log_q` gathers targets from the first
        and samples from the second (gru4rec::train_step_ takes them as they are)."""
        return self._log_count, self._log_weight

    def probabilities(self) -> torch.Tensor:
        """The normalised sampling distribution, float64 [N] (for tests and inspection)."""
        return self._p.clone()

    def state_dict(self) -> dict:
        """Generator state, cache and position in it, so a resumed run draws the same samples."""
        return {"generator": self.generator.get_state(), "cache": self._cache.cpu(),
                "pos": int(self._pos)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        cache = state["cache"].to(self.device, torch.int64)
        if cache.shape == self._cache.shape:
            self._cache.copy_(cache)  # in place: a captured step keeps reading the same tensor
        else:
            self._cache = cache
        self._pos = int(state["pos"])
        self._offset.fill_(self._pos)
        self._offset_behind = False
