"""The CUDA kernels of the training step (issue 10) through the host emulation (see
tests/test_cuda_emulation.py for what it covers and what not), against the CPU kernels:

* `dense_adagrad_`: one multi-tensor launch for a list of tensors (sizes around the block size,
  grid-stride rounds, lists longer than one launch takes, mixed dtypes);
* `sparse_adagrad_pair_`: Wy and By at one sorted copy of the indices (duplicates, -1, rows only
  the later indices touch, momentum state of untouched rows);
* `step_inputs_`: the step's inputs at the device-side counters (with and without log q, K = 0,
  more candidates than threads, counters out of range as device asserts);
* `train_step_`: the whole CUDA-mode step (`gru4rec_emu::train_step_`, the composition of
  csrc/train_step.cpp calling the emulated kernels) against the CPU's no-dedup step, and the
  trainer's `StaticStep` on the emulated ops against the CPU trainer.
"""
import math

import pytest
import torch

import gru4rec_ext._extension as ext
from step_cases import MODES, run_step, step_case

try:
    from gru4rec_ext import _cuda_emu
except ImportError:
    _cuda_emu = None

pytestmark = pytest.mark.skipif(_cuda_emu is None or not ext.has_kernel("step_inputs_", "CPU"),
                                reason="the emulation module or the CPU kernels are not built")
if _cuda_emu is not None:
    EMU = torch.ops.gru4rec_emu
CPU = torch.ops.gru4rec
STATE = {torch.float32: torch.float32, torch.float64: torch.float64, torch.bfloat16: torch.float32}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(a, b, dtype):
    tol = {torch.float32: 1e-6, torch.float64: 1e-13}.get(dtype, 1e-2)
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


# ----- dense_adagrad_ -----

def _dense_case(sizes, dtypes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [[], [], [], []]
    for n, dt in zip(sizes, dtypes):
        out[0].append(torch.randn(n, generator=g, dtype=torch.float64).to(dt))
        out[1].append(torch.rand(n, generator=g, dtype=torch.float64).to(STATE[dt]))
        out[2].append(torch.randn(n, generator=g, dtype=torch.float64).to(STATE[dt]))
        out[3].append(torch.randn(n, generator=g, dtype=torch.float64).to(dt))
    return out


def _run_dense(ops, case, momentum):
    p, a, v, g = ([t.clone() for t in ts] for ts in case)
    ops.dense_adagrad_(p, a, v if momentum > 0 else [], g, 0.05, momentum, 1e-6)
    return p, a, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dense_adagrad_multi_tensor(dtype, momentum):
    """Sizes below, at and above the block (256) and a [3H,H] weight: every element once."""
    sizes = [1, 31, 256, 257, 300 * 3, 0, 75]
    case = _dense_case(sizes, [dtype] * len(sizes))
    launches = _cuda_emu.launches()
    emu = _run_dense(EMU, case, momentum)
    assert _cuda_emu.launches() - launches == 1  # one multi-tensor launch
    for x, y in zip(emu, _run_dense(CPU, case, momentum)):
        for a, b in zip(x, y):
            assert _close(a, b, dtype)
    if momentum == 0:
        assert all(torch.equal(a, b) for a, b in zip(case[2], _run_dense(EMU, case, momentum)[2]))


def test_dense_adagrad_grid_stride_long_lists_and_mixed_dtypes():
    """Two grid-stride rounds (the grid limit lowered), a list longer than one launch takes (24)
    and dtypes that change along the list (one launch per run of one dtype)."""
    sizes = [700] * 3 + [5] * 27 + [40, 41]
    dtypes = [torch.float32] * 30 + [torch.float64, torch.float32]
    case = _dense_case(sizes, dtypes, seed=1)
    old = _cuda_emu.set_max_grid_blocks(1)
    launches = _cuda_emu.launches()
    try:
        emu = _run_dense(EMU, case, 0.5)
    finally:
        _cuda_emu.set_max_grid_blocks(old)
    assert _cuda_emu.launches() - launches == 4  # 24 float32, 6 float32, 1 float64, 1 float32
    for x, y in zip(emu, _run_dense(CPU, case, 0.5)):
        for a, b, dt in zip(x, y, dtypes):
            assert _close(a, b, dt)


# ----- sparse_adagrad_pair_ -----

def _pair_case(dtype, D=20, N=30, M=50, M2=35, seed=0):
    g = torch.Generator().manual_seed(seed)
    st = STATE[dtype]
    mk = lambda shape, f=torch.randn, dt=dtype: f(*shape, generator=g, dtype=torch.float64).to(dt)  # noqa: E731
    idx = torch.randint(0, N - 2, (M,), generator=g)
    idx[::6] = -1
    idx[M2 + 1] = N - 1  # a row only a later index touches: param2 keeps its row and state
    idx[M2 + 2] = N - 1
    return dict(param=mk((N, D)), acc=mk((N, D), torch.rand, st), mom=mk((N, D), dt=st), param2=mk((N, 1)),
                acc2=mk((N, 1), torch.rand, st), mom2=mk((N, 1), dt=st), indices=idx, rows=mk((M, D)),
                rows2=mk((M2, 1)))


def _run_pair(ops, case, momentum):
    c = {k: v.clone() for k, v in case.items()}
    mom, mom2 = (c["mom"], c["mom2"]) if momentum > 0 else (torch.empty(0, 1), torch.empty(0, 1))
    ops.sparse_adagrad_pair_(c["param"], c["acc"], mom, c["param2"], c["acc2"], mom2, c["indices"], c["rows"],
                             c["rows2"], 0.05, momentum, 1e-6)
    return c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("D", [1, 20, 300])
def test_sparse_adagrad_pair(dtype, momentum, D):
    case = _pair_case(dtype, D=D)
    launches = _cuda_emu.launches()
    emu = _run_pair(EMU, case, momentum)
    assert _cuda_emu.launches() - launches == 1  # both tables in one launch (the sort is ATen's)
    cpu = _run_pair(CPU, case, momentum)
    for k in ("param", "acc", "mom", "param2", "acc2", "mom2"):
        assert _close(emu[k], cpu[k], dtype), k
    for k in ("param2", "acc2", "mom2"):  # row N-1: touched by Wy's later indices only
        assert torch.equal(emu[k][-1], case[k][-1]), k
    assert not torch.equal(emu["param"][-1], case["param"][-1])
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[case["indices"][case["indices"] >= 0]] = False
    assert torch.equal(emu["param"][untouched], case["param"][untouched])


def test_sparse_adagrad_pair_checks_and_device_assert():
    case = _pair_case(torch.float32)
    with pytest.raises(RuntimeError, match="rows2 must be"):
        EMU.sparse_adagrad_pair_(case["param"], case["acc"], case["mom"], case["param2"], case["acc2"], case["mom2"],
                                 case["indices"][:10], case["rows"][:10], case["rows2"], 0.1, 0.2, 1e-6)
    bad = case["indices"].clone()
    bad[3] = 30
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT failed.*row < N"):
        EMU.sparse_adagrad_pair_(case["param"], case["acc"], case["mom"], case["param2"], case["acc2"], case["mom2"],
                                 bad, case["rows"], case["rows2"], 0.1, 0.2, 1e-6)


# ----- step_inputs_ -----

def _inputs_case(S=5, B=6, K=7, Nc=40, N=30, log=True, dtype=torch.float32, seed=0, upd=True):
    g = torch.Generator().manual_seed(seed)
    sched = (torch.randint(0, N, (S, B), generator=g), torch.randint(0, N, (S, B), generator=g),
             torch.rand(S, B, generator=g) < 0.3, torch.rand(S, B, generator=g) < 0.8)
    sched[3][3, :2] = torch.tensor([False, True])  # row 3 has valid rows and dropped ones
    cache = torch.randint(0, N, (Nc,), generator=g)
    tables = (torch.randn(N, generator=g).to(dtype), torch.randn(N, generator=g).to(dtype)) if log else (None, None)
    out = (torch.zeros(B, dtype=torch.int64), torch.zeros(B + K, dtype=torch.int64), torch.zeros(B, dtype=torch.bool),
           torch.zeros(B, dtype=torch.bool), torch.zeros(B + K if log else 0, dtype=dtype))
    if upd:
        out += (torch.full((2 * B + K,), 7, dtype=torch.int64),)
    return sched, cache, tables, out


def _run_inputs(ops, case, step, offset, n=1):
    sched, cache, tables, out = case
    out = tuple(t.clone() for t in out)
    counters = (torch.tensor(step), torch.tensor(offset))
    for _ in range(n):
        ops.step_inputs_(*counters, *sched, cache, *tables, *out)
    return counters, out


@pytest.mark.parametrize("log,dtype", [(True, torch.float32), (True, torch.bfloat16), (True, torch.float64),
                                       (False, torch.float32)])
@pytest.mark.parametrize("B,K", [(6, 7), (3, 0), (40, 300)])
@pytest.mark.parametrize("upd", [True, False])
def test_step_inputs(log, dtype, B, K, upd):
    """Two consecutive steps: rows `step` and `step+1` of the schedule, the samples at the offset,
    log q of the targets (log_count) and of the samples (log_weight), the update rows (targets and
    inputs with -1 for the rows that are not valid, samples between) when asked; the counters
    advance."""
    case = _inputs_case(B=B, K=K, Nc=2 * K + 5, log=log, dtype=dtype, upd=upd)
    (step, offset), out = _run_inputs(EMU, case, 2, 3, n=2)
    (step_c, offset_c), out_c = _run_inputs(CPU, case, 2, 3, n=2)
    assert int(step) == int(step_c) == 4 and int(offset) == int(offset_c) == 3 + 2 * K
    for a, b in zip(out, out_c):
        assert torch.equal(a, b)
    sched, cache, (lc, lw), _ = case
    inputs, candidates, reset, valid, log_q = out[:5]
    assert torch.equal(inputs, sched[0][3]) and torch.equal(candidates[:B], sched[1][3])
    assert (~valid).any() and valid.any()  # the case has rows of both kinds
    if upd:
        minus = torch.full((B,), -1, dtype=torch.int64)
        assert torch.equal(out[5], torch.cat([torch.where(valid, candidates[:B], minus), candidates[B:],
                                              torch.where(valid, inputs, minus)]))
    assert torch.equal(reset, sched[2][3]) and torch.equal(valid, sched[3][3])
    assert torch.equal(candidates[B:], cache[3 + K:3 + 2 * K])
    if log:
        assert torch.equal(log_q, torch.cat([lc[candidates[:B]], lw[candidates[B:]]]))


def test_step_inputs_counters_out_of_range():
    case = _inputs_case()
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT failed.*s < S"):
        _run_inputs(EMU, case, 5, 0)
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT failed.*o \\+ K <= Nc"):
        _run_inputs(EMU, case, 0, 34)
    with pytest.raises(RuntimeError, match="step 5 is out of range"):
        _run_inputs(CPU, case, 5, 0)
    with pytest.raises(RuntimeError, match="log_q must be"):
        sched, cache, tables, out = case
        EMU.step_inputs_(torch.tensor(0), torch.tensor(0), *sched, cache, *tables, *out[:4], torch.zeros(3))
    sched, cache, tables, out = case
    for ops in (EMU, CPU):
        with pytest.raises(RuntimeError, match="update_ids must be a contiguous int64"):
            ops.step_inputs_(torch.tensor(0), torch.tensor(0), *sched, cache, *tables, *out[:5], torch.zeros(3, dtype=torch.int64))


# ----- the whole CUDA-mode step -----




@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loss,tail", [(4, True), (2, False), (0, True)])
def test_emulated_train_step_equals_cpu_no_dedup_step(mode, loss, tail):
    """gru4rec_emu::train_step_ (the composition calling the emulated CUDA kernels: GRU, loss,
    dense and pair Adagrad) against the CPU kernels' dedup=False step: the same loss, hidden state,
    weights and optimizer state to float rounding, with dropout (the same masks: torch's CPU
    generator), momentum, duplicates, and a tail step."""
    valid = torch.tensor([True, False, True, True, False, True]) if tail else None
    args = step_case(mode, valid, loss=loss, logq=1.0 if loss == 4 else 0.0)
    cpu = run_step(args, dedup=False)
    loss_e, hidden_e, state_e = run_step(args, EMU)
    assert math.isclose(float(loss_e), float(cpu[0]), rel_tol=1e-5)
    assert torch.allclose(hidden_e, cpu[1], rtol=1e-5, atol=1e-6)
    for group_e, group_c in zip(state_e, cpu[2]):
        for x, y in zip(group_e, group_c):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), (x - y).abs().max()
    with pytest.raises(RuntimeError, match="dedup=True is CPU-only"):
        EMU.train_step_(*args, dedup=True)


def test_emulated_static_step_trains_like_the_cpu_trainer():
    """The trainer's CUDA step (StaticStep: step_inputs_ + train_step_ + the graph runner's
    check, through a CPU stand-in for the graph) on the emulated kernels: 4 steps give the CPU
    trainer's weights."""
    from gru4rec_ext.train_graph import EagerStandIn
    from test_train_graph import make_trainer, weights
    ref = make_trainer()
    ref.run_epoch(0, max_steps=4)
    emu = make_trainer(static=True, ops=EMU, graph=True, backend=EagerStandIn())
    emu.run_epoch(0, max_steps=4)
    assert emu.make_step().runner.mode == "graph"
    a, b = weights(ref), weights(emu)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
