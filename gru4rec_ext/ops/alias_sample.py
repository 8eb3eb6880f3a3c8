"""`alias_sample_(out, prob, alias, generator)`: a block of samples by Walker's alias method into
`out`, the same numbers as the sequence

    i = torch.randint(0, N, out.shape, generator=generator)
    u = torch.rand(out.shape, generator=generator, dtype=torch.float32)
    out.copy_(torch.where(u < prob[i], i, alias[i]))

which leaves `generator` in the same state. On the CPU the compiled `gru4rec::alias_sample_` (the
generator's words a block at a time, one pass of lookups: about 5x faster); elsewhere, or without
the extension, that sequence. The sampler refills its cache with it (`sampling.PopularitySampler`).
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["alias_sample_"]

_has_cpu_kernel: list = []  # [bool], asked once


def alias_sample_(out: torch.Tensor, prob: torch.Tensor, alias: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """out int64 [S] (filled in place and returned), prob float32 [N], alias int64 [N]."""
    if not _has_cpu_kernel:
        _has_cpu_kernel.append(_extension.has_kernel("alias_sample_", "CPU"))
    if out.device.type == "cpu" and _has_cpu_kernel[0] and out.is_contiguous():
        torch.ops.gru4rec.alias_sample_.default(out, prob, alias, generator)
        return out
    idx = torch.randint(0, prob.numel(), out.shape, generator=generator, device=out.device)
    u = torch.rand(out.shape, generator=generator, device=out.device, dtype=torch.float32)
    return out.copy_(torch.where(u < prob.index_select(0, idx), idx, alias.index_select(0, idx)))


def _fake(out, prob, alias, generator=None):
    return None


def _register():
    if _extension.available() and hasattr(torch.ops.gru4rec, "alias_sample_"):
        torch.library.register_fake("gru4rec::alias_sample_", _fake)


_register()
