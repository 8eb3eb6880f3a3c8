"""Negative sampling for training (SPEC section 4): items drawn with probability ∝ count^alpha.

Samples are drawn in large blocks on the training device (one `torch.rand` + `torch.searchsorted`
of a cumulative table per block, from a seeded `torch.Generator`) and handed out as slices of that
cache, so a training step never waits for the host.
"""
from __future__ import annotations

import torch

DEFAULT_BLOCK_SIZE = 1 << 20


class PopularitySampler:
    """Draws item indices with probability proportional to ``counts ** alpha``.

    Args:
        counts: training item counts, shape [N] (any numeric tensor or sequence), all >= 0 and
            at least one > 0.
        alpha: exponent in [0, 1] (0: uniform over items, 1: the data distribution).
        device: the device the samples live on (the training device).
        block_size: how many samples one refill draws; `draw(K)` slices the cache.
        seed: seed of the sampler's own `torch.Generator` (None: a random seed).
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
        cdf = torch.cumsum(weights, 0)
        self._cdf = (cdf / cdf[-1]).to(self.device)
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
        self._pos = 0

    def _refill(self, k: int) -> None:
        size = max(self.block_size, k)
        u = torch.rand(size, generator=self.generator, device=self.device, dtype=torch.float64)
        idx = torch.searchsorted(self._cdf, u, right=True)
        self._cache = idx.clamp_(max=self.n_items - 1)
        self._pos = 0

    def draw(self, k: int) -> torch.Tensor:
        """The next `k` samples, int64 [k] on the sampler's device (a slice of the cache)."""
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if self._pos + k > self._cache.numel():
            self._refill(k)
        out = self._cache[self._pos:self._pos + k]
        self._pos += k
        return out

    def log_q(self, targets: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """log q of the candidates cat(targets, samples), float32 [B+K] (SPEC section 4).

        q is unnormalised: the training count for the in-batch targets, count^alpha for the
        sampled items.
        """
        return torch.cat([self._log_count.index_select(0, targets),
                          self._log_weight.index_select(0, samples)])

    def probabilities(self) -> torch.Tensor:
        """The normalised sampling distribution, float64 [N] (for tests and inspection)."""
        return torch.diff(self._cdf, prepend=self._cdf.new_zeros(1))

    def state_dict(self) -> dict:
        """Generator state and cache position, so a resumed run draws the same samples."""
        return {"generator": self.generator.get_state(), "cache": self._cache.cpu(),
                "pos": int(self._pos)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self._cache = state["cache"].to(self.device)
        self._pos = int(state["pos"])
