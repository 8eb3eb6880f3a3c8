"""Every CUDA kernel of ours, run on the CPU through the host emulation of the CUDA execution model.

`gru4rec_ext._cuda_emu` (built by default; `GRU4REC_NO_EMU=1` skips it) compiles the kernels and
their launch code (csrc/cuda/kernels/*.cuh: the very source nvcc compiles for the GPU) with the
host compiler against csrc/emu/cuda_emu.h, and registers them for CPU tensors as
`torch.ops.gru4rec_emu.*` with the schemas of `torch.ops.gru4rec.*`. These tests run every kernel
of the session GRU, the sampled loss and sparse_adagrad_ through it, over the shapes the CUDA
tests use (bounded in the number of emulated threads), in float32, float64 and bfloat16, against
the CPU kernels and the pure-PyTorch references.

What the emulation covers: the kernels' indexing (blockIdx/threadIdx/blockDim/gridDim, grid-stride
loops, rows and units that do not fill a block or a warp), their synchronisation (__syncthreads is
a real barrier among a block's threads, warp shuffles exchange values lane by lane, warp by warp;
the lowest or the highest ready thread index runs first, and kernels with barriers run under both,
so a missing barrier gives a stale read of shared memory under one of them; a barrier not every
thread reaches or a divergent shuffle fails the launch), their reductions, device asserts, the numerics of the kernel code
(float accumulation for bf16, the device formulas of gru_math.h), and the host launch code (grid
and block sizes, dtype dispatch, workspace layouts, argument checks before the device guard).

What it does not cover: cuBLAS (the ATen products of the shared host code run on the CPU), the GPU
memory model (every write is visible at once, so a missing __threadfence or volatile goes
unnoticed; data races are only seen through barrier order), timing, occupancy and resource
limits, streams and asynchrony, and nvcc itself (CI compiles the CUDA build with FORCE_CUDA=1).

Set GRU4REC_EMU_REPORT=path.json to write the worst relative error against the reference per op
and dtype.
"""
import json
import os
import random

import pytest
import torch

from conftest import rel_err
from gru4rec_ext.reference import session_gru_reference
from gru4rec_ext.reference_loss import (ACTIVATION_CODES, LOSS_CODES,
                                        sampled_ranking_loss_reference)
from test_sampled_loss import (ACTIVATIONS, LOSSES, assert_rows_close_elementwise,
                               elu_far_below_zero_case, make_inputs, options)
from test_session_gru import RESETS, VARIANTS, make_args, saturated_gate_errors

try:
    from gru4rec_ext import _cuda_emu
except ImportError as exc:  # not built
    _cuda_emu = None
    _EMU_ERROR = exc

if _cuda_emu is None:
    if os.environ.get("GRU4REC_NO_EMU"):
        pytest.skip("GRU4REC_NO_EMU=1: the emulation module is not built", allow_module_level=True)
    raise ImportError(f"gru4rec_ext._cuda_emu is not built ({_EMU_ERROR}); rebuild without "
                      "GRU4REC_NO_EMU=1, or set GRU4REC_NO_EMU=1 to skip these tests")

EMU = torch.ops.gru4rec_emu
CPU = torch.ops.gru4rec
LOW = torch.bfloat16
WORST: dict = {}  # (op, dtype) -> worst relative error against the reference


def record(op, dtype, err):
    key = f"{op} {str(dtype).replace('torch.', '')}"
    WORST[key] = max(WORST.get(key, 0.0), err)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report():
    # The emulation runs on one OS thread, and the host code's small ATen products gain nothing
    # from more; on a busy machine, spinning OpenMP threads would cost seconds per call.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    path = os.environ.get("GRU4REC_EMU_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(dict(sorted(WORST.items())), f, indent=1)


@pytest.fixture(params=["low_first", "high_first"])
def schedule(request):
    """Kernels with barriers run under both schedules of the emulation: the lowest (highest)
    ready thread index runs first, so low (high) warps run ahead as far as the barriers allow,
    and a read of shared memory that a missing barrier leaves unordered sees the stale value
    under one of them."""
    old = _cuda_emu.set_schedule(request.param)
    yield request.param
    _cuda_emu.set_schedule(old)


# ---- tolerances: against the float64 reference, and between the emulated and the CPU kernel ----

REF_TOL = {torch.float32: 1e-5, torch.float64: 1e-10, LOW: 5e-2}
CPU_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, LOW: 2e-2}


# ---- the emulation itself ----

def test_selftest_block_reduction(schedule):
    x = torch.arange(5000, dtype=torch.float32).remainder(13) - 6 + 0.25
    rows = x.view(5, 1000)
    out = torch.tensor(_cuda_emu.selftest("block_sum"))
    assert torch.allclose(out, rows.double().sum(1).float(), rtol=1e-5)
    # Threads 200..255 return before any barrier (legal): the live threads' sum, no deadlock.
    live = (torch.arange(1000) % 256) < 200
    out = torch.tensor(_cuda_emu.selftest("block_sum_early_exit"))
    assert torch.allclose(out, (rows * live).double().sum(1).float(), rtol=1e-5)


@pytest.mark.parametrize("case,caught_by", [("block_sum_missing_barrier", "low_first"),
                                             ("block_sum_missing_second_barrier", "high_first")])
def test_selftest_missing_barrier_changes_results(case, caught_by):
    """Without the barrier after the warps' partials, warp 0 reads them before the other warps
    wrote them when low warps run first; without the one before the total is read, the other
    warps read it before warp 0 wrote it when high warps run first."""
    x = torch.arange(5000, dtype=torch.float32).remainder(13) - 6 + 0.25
    old = _cuda_emu.set_schedule(caught_by)
    try:
        out = torch.tensor(_cuda_emu.selftest(case))
    finally:
        _cuda_emu.set_schedule(old)
    assert not torch.allclose(out, x.view(5, 1000).double().sum(1).float(), rtol=1e-3)


def test_selftest_warp_collectives():
    out = torch.tensor(_cuda_emu.selftest("collectives")).view(7, 32)
    lane = torch.arange(32)
    v = (lane * lane).float()
    assert torch.equal(out[0], v[(lane * 7) % 32])                      # __shfl_sync
    assert torch.equal(out[1], v[lane ^ 5])                             # __shfl_xor_sync
    assert torch.equal(out[2], torch.where(lane >= 3, v[(lane - 3).clamp_min(0)], v))  # up
    seg_end = (lane // 16 + 1) * 16                                     # down, width 16
    assert torch.equal(out[3], torch.where(lane + 3 < seg_end, v[(lane + 3).clamp_max(31)], v))
    assert (out[4] == 1).all() and (out[5] == 1).all() and (out[6] == 0).all()


@pytest.mark.parametrize("case,message", [
    ("divergent_barrier", "divergent __syncthreads"),
    ("barrier_deadlock", "deadlock in block"),
    ("shuffle_exited_lane", "exited"),
    ("divergent_shuffle", "divergent warp collective"),
    ("shuffle_missing_lanes", "lanes that do not exist"),
    ("shuffle_outside_mask", "not in the mask"),
    ("device_assert", r"CUDA_KERNEL_ASSERT failed: `tid != 77`.*thread \(77,0,0\)"),
    ("empty_grid", "invalid configuration"),
    ("too_many_threads", "invalid configuration"),
])
def test_selftest_misuse_fails_the_launch(case, message):
    with pytest.raises(RuntimeError, match=message):
        _cuda_emu.selftest(case)


# ---- session GRU ----

def detached(args):
    return [a.detach() if a is not None else None for a in args]


def cast(args, dtype):
    return [a.to(dtype) if a is not None and a.is_floating_point() else a for a in args]


def gru_reference(args, variant, go, gh):
    """float64 reference: (output, h_n, {name: grad}) for the gradient projection (go, gh)."""
    names = ["input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    x, reset, h0, w_ih, w_hh, b_ih, b_hh = cast(detached(args), torch.float64)
    leaves = dict(zip(names, [x, h0, w_ih, w_hh, b_ih, b_hh]))
    leaves = {k: t.requires_grad_() for k, t in leaves.items() if t is not None and t.is_floating_point()}
    out, h_n = session_gru_reference(x, reset, h0, w_ih, w_hh, b_ih, b_hh, variant)
    grads = torch.autograd.grad((out * go.double()).sum() + (h_n * gh.double()).sum(),
                                list(leaves.values()))
    return out.detach(), h_n.detach(), dict(zip(leaves, grads))


def run_gru(ops, args, variant, go, gh, need_input=True, need_h0=True):
    out, h_n, ws = ops.session_gru_forward(*args, variant)
    grads = ops.session_gru_backward(go, gh, *args, out, ws, variant, need_input, need_h0)
    return (out, h_n, ws), grads


def check_gru(args, variant, dtype=torch.float32, need_input=True, need_h0=True, seed=1):
    """The emulated op against the CPU op (every output) and the float64 reference."""
    v = 0 if variant == "cudnn" else 1
    args = cast(detached(args), dtype)
    T, B = args[0].shape[:2]
    H = args[4].shape[1]
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype)
    gh = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    emu_fwd, emu_bwd = run_gru(EMU, args, v, go, gh, need_input, need_h0)
    cpu_fwd, cpu_bwd = run_gru(CPU, args, v, go, gh, need_input, need_h0)
    names_fwd = ("output", "h_n", "workspace")
    names_bwd = ("grad_input", "grad_h0", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih",
                 "grad_bias_hh")
    for name, a, b in zip(names_fwd + names_bwd, emu_fwd + emu_bwd, cpu_fwd + cpu_bwd):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.numel():
            err = rel_err(a, b)
            assert err < CPU_TOL[dtype], f"{name}: emulated vs CPU kernel, rel err {err:.2e}"
    ref_out, ref_h_n, ref_g = gru_reference(args, variant, go, gh)
    emu_g = dict(zip(("input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), emu_bwd))
    checks = [("output", emu_fwd[0], ref_out), ("h_n", emu_fwd[1], ref_h_n)]
    for name, ref in ref_g.items():
        ours = emu_g[name]
        if (name == "input" and not need_input) or (name == "h0" and not need_h0):
            assert ours.numel() == 0, name
        elif name == "weight_ih" and args[0].dtype == torch.long:
            # id input: row t*B+b of the row-sparse [T*B, 3H] gradient is column input[t, b]'s
            assert ours.shape == (T * B, 3 * H)
            dense = torch.zeros(ref.shape, dtype=torch.float64).index_add_(
                1, args[0].reshape(-1), ours.double().t())
            checks.append(("grad_weight_ih (densified)", dense, ref))
        else:
            checks.append(("grad_" + name, ours, ref))
    for name, ours, ref in checks:
        err = rel_err(ours, ref)
        record("session_gru", dtype, err)
        assert err < REF_TOL[dtype], f"{name}: emulated vs reference, rel err {err:.2e}"


def emu_shapes(seed, count, max_threads=150_000):
    """(T, B, H, E) drawn as test_session_gru.random_shapes draws them (T 1..50, B 1..300,
    H 1..600, E 1..300), keeping those with at most max_threads emulated threads per kernel
    over all steps (T * B * H)."""
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < count:
        T, B, H, E = rng.randint(1, 50), rng.randint(1, 300), rng.randint(1, 600), rng.randint(1, 300)
        if T * B * H <= max_threads:
            shapes.append((T, B, H, E))
    return shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("case", range(4))
def test_gru_random_shapes(variant, ids, case):
    T, B, H, E = emu_shapes(seed=100 + case + 10 * ids + 20 * (variant == "cudnn"), count=1)[0]
    check_gru(make_args(T, B, H, E, ids, "cpu", reset=RESETS[case]), variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 300, 600, 64), (50, 2, 33, 5), (3, 7, 31, 97)])
def test_gru_edge_shapes(variant, shape, schedule):
    T, B, H, E = shape
    for ids in (False, True):
        check_gru(make_args(T, B, H, E, ids, "cpu"), variant)


@pytest.mark.parametrize("dtype", [torch.float64, LOW], ids=["float64", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_gru_dtypes(dtype, variant, ids):
    shapes = [(4, 16, 64, 32), (3, 7, 31, 97)] + emu_shapes(seed=7 + ids, count=2)
    for k, (T, B, H, E) in enumerate(shapes):
        check_gru(make_args(T, B, H, E, ids, "cpu", reset=RESETS[k]), variant, dtype=dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("missing", ["both", "bias_ih", "bias_hh"])
def test_gru_missing_bias_and_repeated_ids(variant, missing, schedule):
    for ids, E in ((True, 3), (False, 6)):  # 9 rows over 3 items: repeated ids
        args = make_args(4, 9, 17, E, ids, "cpu")
        if missing in ("both", "bias_ih"):
            args[5] = None
        if missing in ("both", "bias_hh"):
            args[6] = None
        check_gru(args, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("need", [(False, False), (True, False), (False, True)])
def test_gru_need_grad_flags(variant, T, need):
    check_gru(make_args(T, 6, 7, 5, False, "cpu", reset="first"), variant, need_input=need[0],
              need_h0=need[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_gru_grid_stride_rounds(variant):
    """With at most 3 blocks a launch, every kernel loops over its grid several times."""
    old = _cuda_emu.set_max_grid_blocks(3)
    try:
        for ids in (False, True):
            check_gru(make_args(5, 13, 70, 9, ids, "cpu"), variant)  # B*H = 910: 4 rounds of 256
    finally:
        _cuda_emu.set_max_grid_blocks(old)


def test_gru_id_out_of_range_is_a_device_assert():
    """On CUDA the ids are checked by the kernel (no host sync per step): a device assert."""
    args = detached(make_args(2, 3, 4, 5, True, "cpu"))
    args[0][1, 2] = 5  # N = 5 items
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT failed.*input item id out of range"):
        EMU.session_gru_forward(*args, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
def test_gru_half_and_float8_rejected(dtype):
    args = cast(detached(make_args(2, 3, 4, 5, False, "cpu")), dtype)
    with pytest.raises(RuntimeError, match=f"weight_hh has dtype {'Half' if dtype == torch.float16 else 'Float8'}"):
        EMU.session_gru_forward(*args, 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gru_bfloat16_saturated_gates_keep_their_gradient(variant):
    """z = sigmoid(8) rounds to 1 in bf16: a bf16 workspace would lose (1 - z) and the update
    gate's gradient; the float32 workspace keeps it (see test_session_gru)."""
    errors, ws_dtype = saturated_gate_errors(EMU, variant)
    assert ws_dtype == torch.float32
    for name, err in errors.items():
        assert err < 3e-2, f"grad of {name}: rel err {err:.2e}"


# ---- sampled loss ----

def loss_args(inputs, opts, dtype):
    """The op's arguments for make_inputs / options (cast to dtype)."""
    loss_name = opts["loss"]
    code = LOSS_CODES[loss_name]
    act_name = opts.get("activation", "linear")
    act = ACTIVATION_CODES["elu"] if act_name.startswith("elu") else ACTIVATION_CODES[act_name]
    alpha = float(act_name[4:]) if act_name.startswith("elu-") else 1.0
    cands = torch.cat((inputs["targets"], inputs["samples"]))
    log_q = opts.get("log_q")
    return ([inputs["hidden"].to(dtype), inputs["weight"].to(dtype), inputs["bias"].to(dtype), cands,
             log_q.to(dtype) if log_q is not None else None, opts.get("valid")],
            [code, act, alpha, float(opts.get("bpreg", 0.0)), float(opts.get("logq", 0.0)),
             bool(opts.get("mask_accidental_hits", False))])


def run_loss(ops, tensors, scalars):
    loss, ws = ops.sampled_loss_forward(*tensors, *scalars)
    one = torch.ones((), dtype=tensors[0].dtype)
    return (loss,) + tuple(ops.sampled_loss_backward(one, *tensors, *scalars, ws))


def check_loss(inputs, opts, dtype=torch.float32):
    """The emulated op against the CPU op and the float64 reference (loss, dL/dhidden, and the
    weight and bias gradients summed per item)."""
    tensors, scalars = loss_args(inputs, opts, dtype)
    emu = run_loss(EMU, tensors, scalars)
    cpu = run_loss(CPU, tensors, scalars)
    for name, a, b in zip(("loss", "grad_hidden", "grad_weight_rows", "grad_bias_rows"), emu, cpu):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.isfinite(a).all(), name
        err = rel_err(a, b)
        assert err < CPU_TOL[dtype] or (a == b).all(), f"{name}: emulated vs CPU kernel, rel err {err:.2e}"
    ref_inputs = {k: (v.to(dtype).double() if v.is_floating_point() else v) for k, v in inputs.items()}
    ref_opts = dict(opts)
    if "log_q" in opts:
        ref_opts["log_q"] = ref_inputs["log_q"]
    params = [ref_inputs[k].requires_grad_() for k in ("hidden", "weight", "bias")]
    ref = sampled_ranking_loss_reference(*params, inputs["targets"], inputs["samples"], **ref_opts)
    ref_g = torch.autograd.grad(ref, params)
    cands = tensors[3]
    ours = [emu[0], emu[1],
            torch.zeros_like(params[1], dtype=torch.float64).index_add_(0, cands, emu[2].double()),
            torch.zeros_like(params[2], dtype=torch.float64).index_add_(0, cands, emu[3].double())]
    for name, a, b in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), ours, (ref,) + ref_g):
        err = rel_err(a, b)
        record("sampled_loss", dtype, err)
        assert err < REF_TOL[dtype] or (b.abs().max() == 0 and (a == 0).all()), \
            f"{name}: emulated vs reference, rel err {err:.2e}"


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_every_option(loss, activation, mask, schedule):
    seed = 10 * LOSSES.index(loss) + 2 * ACTIVATIONS.index(activation) + mask
    inputs = make_inputs(19, 37, 8, 50, device="cpu", seed=seed)
    check_loss(inputs, options(loss, activation, mask, inputs))


@pytest.mark.parametrize("draw", range(5))
def test_loss_random_shapes(draw, schedule):
    """As test_float32_random_shapes, with B up to 128 rows (one emulated block per row)."""
    g = torch.Generator().manual_seed(100 + draw)
    B = int(torch.randint(1, 129, (1,), generator=g))
    K = [0, int(torch.randint(1, 4097, (1,), generator=g)), 4096, 2048, 1000][draw]
    H = int(torch.randint(1, 65, (1,), generator=g))
    loss, activation = LOSSES[draw % 5], ACTIVATIONS[draw % 3]
    inputs = make_inputs(B, K, H, 3000, device="cpu", seed=draw)
    check_loss(inputs, options(loss, activation, draw % 2 == 1, inputs))


@pytest.mark.parametrize("C", [1, 255, 256, 257, 511, 512, 513, 1000])
def test_loss_columns_around_the_block_size(C, schedule):
    """C = B + K below, at and above multiples of the row kernel's blocks (512 threads for up to
    256 rows, 256 threads above)."""
    B = 1 if C == 1 else 5
    inputs = make_inputs(B, C - B, 6, 700, device="cpu", seed=C)
    for k, loss in enumerate(LOSSES):
        check_loss(inputs, options(loss, ACTIVATIONS[k % 3], k % 2 == 0, inputs))


@pytest.mark.parametrize("B", [256, 257])
def test_loss_rows_around_the_wide_block_limit(B, schedule):
    """Up to 256 rows a row's block has 512 threads, above it 256: both, every loss."""
    inputs = make_inputs(B, 300, 4, 900, device="cpu", seed=B)
    for k, loss in enumerate(LOSSES):
        check_loss(inputs, options(loss, ACTIVATIONS[k % 3], k % 2 == 1, inputs))


@pytest.mark.parametrize("dtype", [torch.float64, LOW], ids=["float64", "bfloat16"])
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_dtypes(dtype, loss, schedule):
    inputs = make_inputs(24, 300, 16, 400, device="cpu", seed=8)
    check_loss(inputs, options(loss, "tanh", True, inputs), dtype=dtype)
    check_loss(inputs, options(loss, "elu-0.5", False, inputs), dtype=dtype)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_no_negatives_and_invalid_rows(loss, schedule):
    inputs = make_inputs(1, 0, 4, 5, device="cpu")
    check_loss(inputs, options(loss, "linear", False, inputs, with_valid=False))
    inputs = make_inputs(6, 20, 5, 30, device="cpu", seed=11)
    inputs["valid"] = torch.tensor([True, True, False, True, False, True])
    check_loss(inputs, options(loss, "tanh", True, inputs))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_huge_scores(loss, activation, schedule):
    inputs = make_inputs(8, 200, 16, 100, device="cpu", scale=60.0, seed=5)
    tensors, scalars = loss_args(inputs, options(loss, activation, True, inputs), torch.float32)
    for t in run_loss(EMU, tensors, scalars):
        assert torch.isfinite(t).all()


def test_loss_elu_gradient_far_below_zero(schedule):
    """elu'(x) = alpha exp(x) keeps its digits for x < -17 (r + alpha would round to 0)."""
    tensors, scalars, ref_rows = elu_far_below_zero_case()
    assert_rows_close_elementwise(run_loss(EMU, tensors, scalars)[2], ref_rows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
def test_loss_half_and_float8_rejected(dtype):
    inputs = make_inputs(4, 6, 3, 10, device="cpu")
    tensors, scalars = loss_args(inputs, options("bpr", "linear", False, inputs), dtype)
    with pytest.raises(RuntimeError, match="hidden has dtype"):
        EMU.sampled_loss_forward(*tensors, *scalars)


# ---- sparse_adagrad_ ----

def adagrad_case(dtype, D, momentum, transposed=False, N=40, M=70, seed=0):
    """param [N, D] (dtype; a transposed view when `transposed`), float32 state for bf16/fp16,
    70 indices over 40 rows (duplicates, untouched rows) of which every 7th is -1 (skipped)."""
    g = torch.Generator().manual_seed(seed + D)
    state = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

    def table(dt, rand=torch.randn):
        t = rand(D, N, generator=g, dtype=torch.float64).to(dt)
        return t.t() if transposed else t.t().contiguous()

    param, acc, mom = table(dtype), table(state, torch.rand), table(state)
    idx = torch.randint(0, N, (M,), generator=g)
    idx[::7] = -1
    rows = torch.randn(M, D, generator=g, dtype=torch.float64).to(dtype)
    return param, acc, mom, idx, rows


def adagrad_expected(param, acc, mom, idx, rows, lr, momentum, eps):
    """float64 reference on the rows that valid indices touch (duplicates summed)."""
    keep = idx >= 0
    gsum = torch.zeros(param.shape, dtype=torch.float64).index_add_(0, idx[keep], rows[keep].double())
    touched = torch.zeros(param.shape[0], dtype=torch.bool)
    touched[idx[keep]] = True
    a = acc.double() + gsum * gsum
    step = gsum / (a + eps).sqrt()
    m = momentum * mom.double() - lr * step
    p = param.double() + m if momentum > 0 else param.double() - lr * step
    return touched, p, a, m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("D", [1, 31, 64, 100, 300])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_adagrad(dtype, D, momentum):
    """The emulated kernel against the CPU kernel and the float64 reference."""
    check_sparse_adagrad(dtype, D, momentum, transposed=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_adagrad_transposed_param(dtype, momentum):
    """A transposed view (weight_ih.t(), the one-hot input's column update): strided rows."""
    check_sparse_adagrad(dtype, 100, momentum, transposed=True)


def check_sparse_adagrad(dtype, D, momentum, transposed):
    lr, eps = 0.05, 1e-6
    case = adagrad_case(dtype, D, momentum, transposed)
    touched, ref_p, ref_a, ref_m = adagrad_expected(*case, lr, momentum, eps)
    param, acc, mom, idx, rows = case
    results = {}
    for name, ops in (("emu", EMU), ("cpu", CPU)):
        p, a, m = (t.clone() if not transposed else t.t().clone().t() for t in (param, acc, mom))
        assert p.stride() == param.stride()
        ops.sparse_adagrad_(p, a, m, idx, rows, lr, momentum, eps)
        results[name] = (p, a, m)
    reduced = dtype in (torch.bfloat16, torch.float16)
    ulp = torch.finfo(dtype).eps
    tol = {torch.float32: 1e-6, torch.float64: 1e-13}.get(dtype, 1e-5)
    (pe, ae, me), (pc, ac, mc) = results["emu"], results["cpu"]
    # Emulated against CPU kernel: the same update (sums in another order: an ulp at most).
    if reduced:
        assert torch.allclose(pe.double(), pc.double(), rtol=2 * ulp, atol=0)
    else:
        assert rel_err(pe, pc) < tol
    assert rel_err(ae, ac) < tol and (momentum == 0 or rel_err(me, mc) < tol)
    # Against the reference: touched rows updated (bf16/fp16: rounded once), the others unchanged.
    assert torch.equal(pe[~touched], param[~touched]) and torch.equal(ae[~touched], acc[~touched])
    err_p = rel_err(pe[touched], ref_p[touched])
    assert err_p < (ulp if reduced else tol), err_p
    assert rel_err(ae[touched], ref_a[touched]) < max(tol, 1e-6)
    if momentum > 0:
        assert rel_err(me[touched], ref_m[touched]) < max(tol, 1e-6)
        assert torch.equal(me[~touched], mom[~touched])
    record("sparse_adagrad_", dtype, err_p)


def sorted_path(sort):
    """Runs the sparse Adagrad kernels after a sort (`sort`) or on their scan of the indices."""
    class _Path:
        def __enter__(self):
            self.old = _cuda_emu.set_scan_max_indices(0 if sort else 1 << 30)

        def __exit__(self, *exc):
            _cuda_emu.set_scan_max_indices(self.old)
    return _Path()


def long_runs_case(dtype, D, momentum, seed=3):
    """500 indices over 5 rows (runs of ~100, some past the 128 positions a block keeps, one row
    in two thirds of them), every 9th -1: the kernels' second scan of the indices."""
    param, acc, mom, _, _ = adagrad_case(dtype, D, momentum, N=5, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.where(torch.rand(500, generator=g) < 0.66, 2, torch.randint(0, 5, (500,), generator=g))
    idx[::9] = -1
    rows = torch.randn(500, D, generator=g, dtype=torch.float64).to(dtype)
    return param, acc, mom, idx, rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("case", ["short-runs", "long-runs"])
def test_sparse_adagrad_scan_equals_sort(dtype, momentum, case):
    """The two ways the kernels find the runs of equal indices (a scan of the indices by each block
    up to 8192 of them, one sort above) sum each run in the same order: the same bits. Both match
    the CPU kernel and the float64 reference, runs longer than a block keeps included."""
    lr, eps, D = 0.05, 1e-6, 33
    param, acc, mom, idx, rows = (adagrad_case(dtype, D, momentum) if case == "short-runs"
                                  else long_runs_case(dtype, D, momentum))
    out = {}
    for sort in (False, True):
        with sorted_path(sort):
            p, a, m = param.clone(), acc.clone(), mom.clone()
            EMU.sparse_adagrad_(p, a, m, idx, rows, lr, momentum, eps)
        out[sort] = (p, a, m)
    for x, y in zip(out[False], out[True]):
        assert torch.equal(x, y)
    touched, ref_p, _, _ = adagrad_expected(param, acc, mom, idx, rows, lr, momentum, eps)
    tol = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    assert rel_err(out[False][0][touched], ref_p[touched]) < tol
    assert torch.equal(out[False][0][~touched], param[~touched])
    p, a, m = param.clone(), acc.clone(), mom.clone()
    CPU.sparse_adagrad_(p, a, m, idx, rows, lr, momentum, eps)
    assert rel_err(out[False][0], p) < tol and rel_err(out[False][1], a) < tol


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("case", ["short-runs", "long-runs"])
@pytest.mark.parametrize("sort", [False, True], ids=["scan", "sort"])
def test_sparse_adagrad_pair(momentum, case, sort):
    """sparse_adagrad_pair_ (Wy [N,D] at every index, By [N,1] at the first M2 only) on both paths:
    against the CPU pair kernel, and against two single-table updates (By's at its M2 indices)."""
    lr, eps, D = 0.05, 1e-6, 20
    param, acc, mom, idx, rows = (adagrad_case(torch.float32, D, momentum) if case == "short-runs"
                                  else long_runs_case(torch.float32, D, momentum))
    N, M = param.shape[0], idx.shape[0]
    M2 = M // 3
    g = torch.Generator().manual_seed(11)
    by, by_acc, by_mom = torch.randn(N, 1, generator=g), torch.rand(N, 1, generator=g), torch.randn(N, 1, generator=g)
    rows2 = torch.randn(M2, 1, generator=g)
    results = {}
    for name, ops in (("emu", EMU), ("cpu", CPU)):
        t = [x.clone() for x in (param, acc, mom, by, by_acc, by_mom)]
        with sorted_path(sort):
            ops.sparse_adagrad_pair_(*t, idx, rows, rows2, lr, momentum, eps)
        results[name] = t
    two = [x.clone() for x in (param, acc, mom, by, by_acc, by_mom)]
    with sorted_path(sort):
        EMU.sparse_adagrad_(*two[:3], idx, rows, lr, momentum, eps)
        EMU.sparse_adagrad_(*two[3:], idx[:M2], rows2, lr, momentum, eps)
    for e, c, t in zip(results["emu"], results["cpu"], two):
        assert torch.equal(e, t)  # the same runs, summed in the same order
        assert rel_err(e, c) < 1e-5


def test_sparse_adagrad_bad_index_is_a_device_assert():
    param, acc = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="CUDA_KERNEL_ASSERT failed.*row < N"):
        EMU.sparse_adagrad_(param, acc, torch.empty(0), torch.tensor([1, 4]), torch.ones(2, 3),
                            0.1, 0.0, 1e-6)


def test_emulated_ops_are_registered_like_the_real_ones():
    for op in _cuda_emu.ops:
        assert str(getattr(EMU, op).default._schema).replace("gru4rec_emu::", "") == \
            str(getattr(CPU, op).default._schema).replace("gru4rec::", "")
