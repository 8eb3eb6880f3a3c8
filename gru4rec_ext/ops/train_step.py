"""`gru4rec::train_step_`: one whole GRU4Rec training step in one compiled call (CPU and CUDA), and
`gru4rec::step_inputs_`, the graph-safe read of a step's inputs.

Its reference is the trainer's Python sequence of ops (`gru4rec_ext.train_step.compute_step`, then
`AdagradM`'s updates): the op runs the same ops in the same order and trains to the same weights
bit for bit on the CPU (tests/test_train.py). `dedup` picks how the candidates are scored: each
distinct item once (CPU kernels only; the CPU's default) or the B+K columns as they are (every
device; CUDA's default), which gives the same update to float rounding.

The op's Meta kernel is the C++ composition itself (in the CUDA mode), which calls the other ops'
fake kernels: tracing tools see its output shapes, and `benchmarks/bench_train.py --meta` times the
host side of a CUDA step with it. This module registers the fake kernels of the step's in-place
ops (the Adagrad updates, `step_inputs_`), which the composition calls on meta tensors.
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["train_step_", "step_inputs_"]


def train_step_(*args, **kwargs):
    """torch.ops.gru4rec.train_step_ (see csrc/train_step.cpp for the arguments):
    returns (loss [], new hidden [L,B,H]) and updates the parameters and their Adagrad state."""
    return torch.ops.gru4rec.train_step_.default(*args, **kwargs)


def step_inputs_(*args):
    """torch.ops.gru4rec.step_inputs_ (see csrc/step_inputs.cpp): reads schedule row `step` and the
    K samples at `offset` into static buffers, then advances both device-side counters."""
    return torch.ops.gru4rec.step_inputs_.default(*args)


def _fake(inputs, targets, reset, valid, samples, log_count, log_weight, hidden, tables, table_accs, table_moms,
          gru_params, gru_accs, gru_moms, variants, input_mode, dropout_embed, dropout_hidden, loss, activation,
          elu_alpha, bpreg, logq, mask_hits, lr, momentum, eps, dedup=None, log_q=None, update_ids=None):
    if hidden.dim() != 3 or hidden.shape[0] != len(variants):
        raise RuntimeError(f"train_step_: hidden must be [L={len(variants)}, B, H], got {list(hidden.shape)}")
    return hidden.new_empty(()), torch.empty_like(hidden)


def _nothing(*args, **kwargs):  # the fake kernel of an in-place op that returns nothing
    return None


def _dropout_fake(mask, x, p):
    if mask.shape != x.shape or mask.dtype != x.dtype:
        raise RuntimeError(f"dropout_apply_: mask must match x ({list(x.shape)}, {x.dtype}), got "
                           f"{list(mask.shape)}, {mask.dtype}")
    return torch.empty_like(x)


def _register():
    if not _extension.available():
        return
    ops = torch.ops.gru4rec
    for name in ("sparse_adagrad_", "sparse_adagrad_pair_", "dense_adagrad_", "step_inputs_"):
        if hasattr(ops, name) and not _extension.has_kernel(name, "Meta"):
            torch.library.register_fake(f"gru4rec::{name}", _nothing)
    if hasattr(ops, "dropout_apply_") and not _extension.has_kernel("dropout_apply_", "Meta"):
        torch.library.register_fake("gru4rec::dropout_apply_", _dropout_fake)
    # The C++ Meta kernel (the composition) is the fake kernel when built; else this shape rule.
    if hasattr(ops, "train_step_") and not _extension.has_kernel("train_step_", "Meta"):
        torch.library.register_fake("gru4rec::train_step_", _fake)


_register()
