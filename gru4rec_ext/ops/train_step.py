"""`gru4rec::train_step_`: one whole GRU4Rec training step in one compiled call (CPU).

Its reference is the trainer's Python sequence of ops (`gru4rec_ext.train_step.compute_step`, then
`AdagradM`'s updates): the op runs the same ops in the same order and trains to the same weights
bit for bit (tests/test_train.py). `Trainer` calls it on the CPU when it is built. This module
registers its fake (meta) kernel, so tracing tools see its output shapes.
"""
from __future__ import annotations

import torch

from .. import _extension

__all__ = ["train_step_"]


def train_step_(*args, **kwargs):
    """torch.ops.gru4rec.train_step_ (see csrc/train_step.cpp for the arguments):
    returns (loss [], new hidden [L,B,H]) and updates the parameters and their Adagrad state."""
    return torch.ops.gru4rec.train_step_.default(*args, **kwargs)


def _fake(inputs, targets, reset, valid, samples, log_count, log_weight, hidden, tables, table_accs, table_moms,
          gru_params, gru_accs, gru_moms, variants, input_mode, dropout_embed, dropout_hidden, loss, activation,
          elu_alpha, bpreg, logq, mask_hits, lr, momentum, eps):
    if hidden.dim() != 3 or hidden.shape[0] != len(variants):
        raise RuntimeError(f"train_step_: hidden must be [L={len(variants)}, B, H], got {list(hidden.shape)}")
    return hidden.new_empty(()), torch.empty_like(hidden)


def _register():
    if _extension.available() and hasattr(torch.ops.gru4rec, "train_step_"):
        torch.library.register_fake("gru4rec::train_step_", _fake)


_register()
