"""`unique_ids(ids, num_ids) -> (unique, inverse)`: the distinct ids of a 1-D int64 tensor and the
index of each position's id among them, `unique[inverse] == ids`.

On the CPU the compiled `gru4rec::unique_ids` (one O(M) pass, ids in order of first appearance);
elsewhere, or without the extension, `torch.unique` (sorted ids). The trainer uses it to gather,
score and update each distinct candidate item once per step.
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["unique_ids"]

_has_cpu_kernel: list = []  # [bool], asked once


def unique_ids(ids: torch.Tensor, num_ids: int):
    """ids int64 [M] with values in [0, num_ids) -> (unique int64 [U], inverse int64 [M])."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
        raise TypeError("ids must be a 1-D int64 tensor")
    if not _has_cpu_kernel:
        _has_cpu_kernel.append(_extension.has_kernel("unique_ids", "CPU"))
    if ids.device.type == "cpu" and _has_cpu_kernel[0]:
        return torch.ops.gru4rec.unique_ids.default(ids, int(num_ids))
    return torch.unique(ids, sorted=True, return_inverse=True)


def _fake(ids, num_ids):
    ctx = torch.library.get_ctx()
    u = ctx.new_dynamic_size()
    return ids.new_empty((u,)), ids.new_empty(ids.shape)


def _register():
    if _extension.available() and hasattr(torch.ops.gru4rec, "unique_ids"):
        torch.library.register_fake("gru4rec::unique_ids", _fake)


_register()
