"""Session-parallel mini-batches: the schedule of a whole epoch, computed up front (SPEC 2 and 8).

B slots run in parallel. Each slot feeds its session's current event as input and the next event
as target; when its session has no next event it takes the next unused session (in `order`) and
its `reset` is set at that step (the hidden row is zeroed before the step). When no unused
session is left the slot is invalid (input/target 0, `valid` False) until every session is
consumed. Steps with no valid slot are not emitted. Every (item, next item) pair of the data
appears exactly once, and every step has the same shape [B].

The per-step loop runs in C++ (`gru4rec_ext._C.build_schedule`) when the extension is built, and
in numpy otherwise (the same result; the tests check it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from . import _extension
from .data import SessionData

logger = logging.getLogger("gru4rec_ext")


@dataclass
class EpochSchedule:
    """One epoch of session-parallel steps; every field is a torch tensor of shape [S, B].

    inputs int64: input item index per step and slot (0 where invalid)
    targets int64: target item index (0 where invalid)
    reset bool: the slot starts a new session at this step (hidden row zeroed before the step);
        True for every valid slot at step 0, False where invalid
    valid bool: the slot has a session at this step (invalid rows count for nothing)
    n_pairs: the number of valid (input, target) pairs (= valid.sum())
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    reset: torch.Tensor
    valid: torch.Tensor
    n_pairs: int

    @property
    def n_steps(self) -> int:
        return self.inputs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        return self.n_steps

    def to(self, device, non_blocking: bool = False) -> "EpochSchedule":
        """The same schedule with every tensor on `device`."""
        return EpochSchedule(self.inputs.to(device, non_blocking=non_blocking),
                             self.targets.to(device, non_blocking=non_blocking),
                             self.reset.to(device, non_blocking=non_blocking),
                             self.valid.to(device, non_blocking=non_blocking), self.n_pairs)


def session_order(n_sessions: int, *, shuffle: bool = False, seed=None) -> np.ndarray:
    """int64 [n_sessions]: the order sessions are taken in (a seeded permutation when shuffle)."""
    if not shuffle:
        return np.arange(n_sessions, dtype=np.int64)
    return np.random.default_rng(seed).permutation(n_sessions).astype(np.int64)


def check_item_ids(data: SessionData, n_items: int) -> None:
    """Every item index of `data` must be in [0, n_items): else a ValueError naming the data, the
    first bad id, its event and its session. One pass over the events on the host, so that no
    training or evaluation step has to check its ids (the kernels keep only device asserts)."""
    items = data.items
    if not len(items):
        return
    bad = np.flatnonzero((items < 0) | (items >= n_items))
    if len(bad):
        pos = int(bad[0])
        session = data.session_ids[int(np.searchsorted(data.offsets, pos, side="right")) - 1]
        raise ValueError(f"{data.name}: item id {int(items[pos])} (event {pos}, session {session}) is out of "
                         f"range [0, {n_items}) of the model's items; {len(bad)} event(s) are")


def build_schedule(data: SessionData, batch_size: int, *, shuffle: bool = False, seed=None,
                   order=None, n_items: int | None = None) -> EpochSchedule:
    """The session-parallel schedule of one epoch over `data` with `batch_size` slots.

    Sessions are taken in data order, or in a random order when `shuffle` (reproducible with
    `seed`), or in the explicit `order` (int session indices) when given. Sessions with fewer than
    2 events are skipped. n_items: when given, every item id is checked to be in [0, n_items)
    (`check_item_ids`): the steps that index with the schedule then need no check of their own.
    Returns CPU tensors; move them once with `.to(device)`.
    """
    if not isinstance(data, SessionData):
        raise TypeError(f"data: expected a SessionData, got {type(data).__name__}")
    if n_items is not None:
        check_item_ids(data, int(n_items))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if order is None:
        order = session_order(data.n_sessions, shuffle=shuffle, seed=seed)
    else:
        order = np.ascontiguousarray(order, dtype=np.int64)
        if order.ndim != 1 or (order.size and (order.min() < 0 or order.max() >= data.n_sessions)):
            raise ValueError(f"order: expected 1-D session indices in [0, {data.n_sessions})")
    if _extension.available() and hasattr(_extension._C, "build_schedule"):
        out = _extension._C.build_schedule(torch.from_numpy(data.offsets), torch.from_numpy(data.items),
                                           int(batch_size), torch.from_numpy(order))
        inputs, targets, reset, valid = (torch.as_tensor(t) for t in out)
    else:
        arrays = build_schedule_numpy(data.offsets, data.items, int(batch_size), order)
        inputs, targets, reset, valid = (torch.from_numpy(a) for a in arrays)
    return EpochSchedule(inputs, targets, reset, valid, int(valid.sum()))


def build_schedule_numpy(offsets: np.ndarray, items: np.ndarray, batch_size: int,
                         order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The numpy fallback of `_C.build_schedule`: (inputs, targets, reset, valid), each [S, B].

    One iteration per step, vectorised over the slots; slots that run out in the same step take
    the next sessions in increasing slot order.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.asarray(order, dtype=np.int64)
    lengths = offsets[order + 1] - offsets[order]
    queue = order[lengths >= 2]  # sessions that give pairs, in the order they are taken
    B = int(batch_size)
    pos = np.zeros(B, dtype=np.int64)   # index of the slot's current input event
    end = np.zeros(B, dtype=np.int64)   # index one past the slot's session's last event
    active = np.zeros(B, dtype=bool)
    n_first = min(B, len(queue))
    pos[:n_first] = offsets[queue[:n_first]]
    end[:n_first] = offsets[queue[:n_first] + 1]
    active[:n_first] = True
    next_session = n_first
    reset = active.copy()
    rows_in, rows_tg, rows_reset, rows_valid = [], [], [], []
    while active.any():
        safe = np.where(active, pos, 0)
        rows_in.append(np.where(active, items[safe], 0))
        rows_tg.append(np.where(active, items[np.minimum(safe + 1, len(items) - 1)], 0))
        rows_reset.append(reset)
        rows_valid.append(active.copy())
        pos = pos + 1
        done = np.flatnonzero(active & (pos + 1 >= end))
        take = min(len(done), len(queue) - next_session)
        new = queue[next_session:next_session + take]
        next_session += take
        slots = done[:take]
        pos[slots] = offsets[new]
        end[slots] = offsets[new + 1]
        active[done[take:]] = False
        reset = np.zeros(B, dtype=bool)
        reset[slots] = True
    if not rows_in:
        empty = np.zeros((0, B), dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, B), dtype=bool), np.zeros((0, B), dtype=bool)
    return (np.stack(rows_in), np.stack(rows_tg), np.stack(rows_reset), np.stack(rows_valid))
