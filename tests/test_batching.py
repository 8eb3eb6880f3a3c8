"""Session-parallel epoch schedules (SPEC sections 2 and 8): every pair once, resets, C++ == numpy."""
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext import batching
from gru4rec_ext.batching import EpochSchedule, build_schedule, build_schedule_numpy, session_order
from gru4rec_ext.data import ItemMap, SessionData

from conftest import needs_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSC15_TRAIN = os.path.join(ROOT, "data", "rsc15_100k", "train.tsv.xz")


@pytest.fixture(scope="module")
def rsc15():
    return SessionData.from_file(RSC15_TRAIN)


def small_data(lengths, seed=0, n_items=50):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    items = rng.integers(0, n_items, size=int(offsets[-1]))
    imap = ItemMap.fit(np.arange(n_items))
    return SessionData(items, offsets, np.arange(len(lengths)), imap)


def schedule_pairs(sched):
    """(input event position, ...) can't be recovered from ids alone; count (input, target) pairs."""
    v = sched.valid
    return Counter(zip(sched.inputs[v].tolist(), sched.targets[v].tolist()))


def data_pairs(data):
    pairs = Counter()
    for s in range(data.n_sessions):
        seq = data.items[data.offsets[s]:data.offsets[s + 1]].tolist()
        pairs.update(zip(seq[:-1], seq[1:]))
    return pairs


def replay(sched, data, order):
    """Walks the schedule slot by slot and returns, per slot, the sessions it ran (checking that
    each slot's inputs/targets follow its session event by event and reset marks session starts)."""
    lengths = np.diff(data.offsets)
    queue = [s for s in order if lengths[s] >= 2]
    S, B = sched.inputs.shape
    seen = []
    cur = [None] * B   # (session, position of the next expected input)
    nxt = 0
    inputs, targets = sched.inputs.numpy(), sched.targets.numpy()
    reset, valid = sched.reset.numpy(), sched.valid.numpy()
    for t in range(S):
        assert valid[t].any(), "a step with no valid slot was emitted"
        for b in range(B):
            if not valid[t, b]:
                assert inputs[t, b] == 0 and targets[t, b] == 0 and not reset[t, b]
                cur[b] = "dead"
                continue
            assert cur[b] != "dead", "a slot came back after running dry"
            if reset[t, b]:
                assert cur[b] is None or cur[b][1] == data.offsets[cur[b][0] + 1] - 1, \
                    "reset before the slot's session was finished"
                s = queue[nxt]
                nxt += 1
                seen.append(s)
                cur[b] = (s, data.offsets[s])
            else:
                assert cur[b] is not None, "first step of a slot without reset"
            s, p = cur[b]
            assert inputs[t, b] == data.items[p] and targets[t, b] == data.items[p + 1]
            cur[b] = (s, p + 1)
    for c in cur:
        assert c is None or c == "dead" or c[1] == data.offsets[c[0] + 1] - 1
    return seen, queue


@pytest.mark.parametrize("batch_size", [1, 7, 32, 512])
def test_rsc15_every_pair_exactly_once(rsc15, batch_size):
    sched = build_schedule(rsc15, batch_size)
    assert sched.n_pairs == rsc15.n_pairs == int((np.diff(rsc15.offsets) - 1).sum())
    assert int(sched.valid.sum()) == rsc15.n_pairs
    assert schedule_pairs(sched) == data_pairs(rsc15)
    assert sched.inputs.shape == sched.targets.shape == sched.reset.shape == sched.valid.shape
    assert sched.inputs.shape[1] == batch_size
    assert sched.inputs.dtype == torch.int64 and sched.reset.dtype == torch.bool


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_rsc15_replay_resets_at_session_starts(rsc15, batch_size):
    sched = build_schedule(rsc15, batch_size)
    seen, queue = replay(sched, rsc15, np.arange(rsc15.n_sessions))
    assert seen == queue  # each session once, in order
    assert int(sched.reset.sum()) == rsc15.n_sessions


def test_short_sessions_skipped_and_tail_masked():
    data = small_data([3, 1, 2, 5, 1, 4])
    sched = build_schedule(data, 4)
    seen, queue = replay(sched, data, np.arange(data.n_sessions))
    assert seen == [0, 2, 3, 5]
    assert sched.n_pairs == 2 + 1 + 4 + 3
    assert not sched.valid.all()  # the tail is masked, B stays 4


def test_more_slots_than_sessions():
    data = small_data([2, 3])
    sched = build_schedule(data, 8)
    assert sched.inputs.shape == (2, 8)
    assert sched.valid[:, 2:].sum() == 0
    assert sched.valid.sum() == 3


def test_no_pairs_gives_empty_schedule():
    data = small_data([1, 1])
    sched = build_schedule(data, 4)
    assert sched.inputs.shape == (0, 4) and sched.n_pairs == 0


def test_shuffle_reproducible_with_seed(rsc15):
    a = build_schedule(rsc15, 16, shuffle=True, seed=11)
    b = build_schedule(rsc15, 16, shuffle=True, seed=11)
    c = build_schedule(rsc15, 16, shuffle=True, seed=12)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.reset, b.reset)
    assert not torch.equal(a.inputs[:50], c.inputs[:50])
    order = session_order(rsc15.n_sessions, shuffle=True, seed=11)
    seen, queue = replay(a, rsc15, order)
    assert seen == queue and sorted(seen) == list(range(rsc15.n_sessions))
    assert schedule_pairs(a) == data_pairs(rsc15)


@needs_extension()
@pytest.mark.parametrize("batch_size,shuffle", [(1, False), (5, True), (32, False), (100, True), (30000, False)])
def test_cpp_equals_numpy(rsc15, batch_size, shuffle):
    order = session_order(rsc15.n_sessions, shuffle=shuffle, seed=batch_size)
    out = ext._C.build_schedule(torch.from_numpy(rsc15.offsets), torch.from_numpy(rsc15.items),
                                batch_size, torch.from_numpy(order))
    ref = build_schedule_numpy(rsc15.offsets, rsc15.items, batch_size, order)
    for got, want in zip(out, ref):
        got = torch.as_tensor(got)
        assert got.dtype == torch.from_numpy(want).dtype
        assert torch.equal(got, torch.from_numpy(want))


@needs_extension()
def test_cpp_equals_numpy_with_short_sessions():
    data = small_data([1, 2, 1, 1, 6, 2, 3, 1, 9], seed=3)
    order = np.array([8, 0, 1, 2, 3, 4, 5, 6, 7, 4])  # any index sequence is allowed
    out = ext._C.build_schedule(torch.from_numpy(data.offsets), torch.from_numpy(data.items), 3,
                                torch.from_numpy(order))
    ref = build_schedule_numpy(data.offsets, data.items, 3, order)
    for got, want in zip(out, ref):
        assert torch.equal(torch.as_tensor(got), torch.from_numpy(want))


@needs_extension()
def test_cpp_checks_arguments():
    off, items = torch.tensor([0, 2, 3]), torch.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="batch_size"):
        ext._C.build_schedule(off, items, 0, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="order"):
        ext._C.build_schedule(off, items, 2, torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match="offsets.*int64"):
        ext._C.build_schedule(off.int(), items, 2, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="len\\(items\\)"):
        ext._C.build_schedule(torch.tensor([0, 2, 4]), items, 2, torch.tensor([0, 1]))


def test_fallback_used_without_extension(rsc15, monkeypatch):
    want = build_schedule(rsc15, 9)
    monkeypatch.setattr(batching._extension, "available", lambda: False)
    got = build_schedule(rsc15, 9)
    assert torch.equal(got.inputs, want.inputs) and torch.equal(got.valid, want.valid)


def test_bad_arguments():
    data = small_data([2, 2])
    with pytest.raises(ValueError, match="batch_size"):
        build_schedule(data, 0)
    with pytest.raises(TypeError, match="data"):
        build_schedule(pd.DataFrame(), 4)
    with pytest.raises(ValueError, match="order"):
        build_schedule(data, 2, order=[0, 2])


def test_to_device_keeps_fields():
    sched = build_schedule(small_data([3, 2, 4]), 2)
    moved = sched.to("cpu")
    assert isinstance(moved, EpochSchedule) and moved.n_pairs == sched.n_pairs
    assert torch.equal(moved.targets, sched.targets) and moved.n_steps == sched.n_steps
