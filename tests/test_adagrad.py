"""The Adagrad ops and their PyTorch fallbacks (SPEC section 5): bfloat16/float16 parameters with
float32 state, skipped negative indices, strided (transposed) parameters, on the CPU and on CUDA."""
import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext.optim import AdagradM, dense_adagrad_update_, sparse_adagrad_update_, state_dtype

CUDA = torch.cuda.is_available()
SPARSE_KERNEL = {"cpu": ext.has_kernel("sparse_adagrad_", "CPU"), "cuda": ext.has_kernel("sparse_adagrad_", "CUDA")}
DENSE_KERNEL = ext.has_kernel("dense_adagrad_", "CPU")

# (device, use the compiled op): the PyTorch fallback and the kernel, on the CPU and on CUDA.
IMPLS = [
    ("cpu", False),
    pytest.param("cpu", True, marks=pytest.mark.skipif(not SPARSE_KERNEL["cpu"], reason="kernel not built")),
    pytest.param("cuda", False, marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
    pytest.param("cuda", True, marks=pytest.mark.skipif(not (CUDA and SPARSE_KERNEL["cuda"]),
                                                         reason="no CUDA device or kernel")),
]
REDUCED = [torch.bfloat16, torch.float16]


def adagrad_reference(p, acc, mom, g, lr, mu, eps=1e-6):
    """SPEC section 5 in float64: (p, acc, mom) after one update with gradient g."""
    p, acc, mom, g = (t.double() for t in (p, acc, mom, g))
    acc = acc + g * g
    step = g / torch.sqrt(acc + eps)
    if mu > 0:
        mom = mu * mom - lr * step
        return p + mom, acc, mom
    return p - lr * step, acc, mom


def _case(dtype, device, n=30, d=7, m=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=g).to(dtype)
    acc = torch.rand(n, d, generator=g).to(state_dtype(dtype))
    mom = torch.randn(n, d, generator=g).to(state_dtype(dtype))
    idx = torch.randint(0, n, (m,), generator=g)
    rows = torch.randn(m, d, generator=g).to(dtype)
    return [t.to(device) for t in (p, acc, mom, idx, rows)]


def _same(a, b, device, kernel):
    """Bit for bit, except the PyTorch fallback on CUDA: its index_add_ sums duplicate rows with
    atomics in no fixed order, so two runs agree only to float32 rounding (seen on an H200)."""
    if device == "cuda" and not kernel:
        return torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    return torch.equal(a, b)


def _sparse(device, kernel, p, acc, mom, idx, rows, lr, mu):
    scratch = torch.zeros(p.shape, dtype=acc.dtype, device=device)
    sparse_adagrad_update_(p, acc, mom if mu > 0 else None, scratch, idx, rows, lr, mu, use_kernel=kernel)
    if not kernel:
        assert not scratch.any()  # the scratch is left zero for the next call


@pytest.mark.parametrize("device, kernel", IMPLS)
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("mu", [0.0, 0.4])
def test_sparse_update_reduced_precision_keeps_float32_state(device, kernel, dtype, mu):
    """bf16/fp16 params: the duplicates are summed and the update computed in float32, the state
    stays float32, and the parameter is the float64 reference rounded once (within one ulp)."""
    p, acc, mom, idx, rows = _case(dtype, device)
    dense_g = torch.zeros(p.shape, dtype=torch.float64, device=device).index_add_(0, idx, rows.double())
    exp_p, exp_acc, exp_mom = adagrad_reference(p, acc, mom, dense_g, 0.1, mu)
    touched = torch.zeros(p.shape[0], dtype=torch.bool, device=device)
    touched[idx] = True
    p0, acc0, mom0 = p.clone(), acc.clone(), mom.clone()
    _sparse(device, kernel, p, acc, mom, idx, rows, 0.1, mu)
    assert p.dtype == dtype and acc.dtype == torch.float32
    ulp = torch.finfo(dtype).eps
    assert torch.allclose(p[touched].double(), exp_p[touched], rtol=ulp, atol=ulp)
    assert torch.allclose(acc[touched].double(), exp_acc[touched], rtol=1e-5)
    assert torch.equal(p[~touched], p0[~touched]) and torch.equal(acc[~touched], acc0[~touched])
    if mu > 0:
        assert torch.allclose(mom[touched].double(), exp_mom[touched], rtol=1e-5, atol=1e-6)
        assert torch.equal(mom[~touched], mom0[~touched])


@pytest.mark.parametrize("device, kernel", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mu", [0.0, 0.4])
def test_sparse_update_skips_negative_indices(device, kernel, dtype, mu):
    """Entries with index -1 are ignored (even NaN rows): the result is the update without them,
    and a row only they name (row 0 after clamping, in the fallback) keeps its momentum untouched."""
    p, acc, mom, idx, rows = _case(dtype, device, n=20, m=30, seed=1)
    idx[idx == 0] = 1  # row 0 is named only by skipped entries
    skip = torch.zeros_like(idx, dtype=torch.bool)
    skip[::3] = True
    rows_nan = rows.clone()
    rows_nan[skip] = float("nan")
    expect = [t.clone() for t in (p, acc, mom)]
    _sparse(device, kernel, *expect, idx[~skip], rows[~skip], 0.1, mu)
    got = [t.clone() for t in (p, acc, mom)]
    _sparse(device, kernel, *got, torch.where(skip, -1, idx), rows_nan, 0.1, mu)
    for e, g in zip(expect, got):
        assert _same(e, g, device, kernel)
    assert torch.equal(got[0][0], p[0]) and torch.equal(got[2][0], mom[0])


@pytest.mark.parametrize("device, kernel", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_update_of_a_transposed_view_updates_columns(device, kernel, dtype):
    """param = weight.t() (acc, mom viewed alike) updates weight's columns in place: the same
    values, bit for bit (see _same), as the update of a contiguous copy of the transposed weight."""
    p, acc, mom, idx, rows = _case(dtype, device, n=25, d=9, m=30, seed=2)
    weight, acc_w, mom_w = (t.t().contiguous() for t in (p, acc, mom))  # [D, N] tensors
    _sparse(device, kernel, p, acc, mom, idx, rows, 0.1, 0.3)
    _sparse(device, kernel, weight.t(), acc_w.t(), mom_w.t(), idx, rows, 0.1, 0.3)
    for contiguous, columns in ((p, weight), (acc, acc_w), (mom, mom_w)):
        assert _same(contiguous, columns.t(), device, kernel)


@pytest.mark.skipif(not SPARSE_KERNEL["cpu"], reason="kernel not built")
def test_sparse_update_argument_errors():
    op = torch.ops.gru4rec.sparse_adagrad_
    p, acc, mom, idx, rows = _case(torch.bfloat16, "cpu")
    with pytest.raises(RuntimeError, match="acc must be Float for a BFloat16 param"):
        op(p, acc.bfloat16(), mom, idx, rows, 0.1, 0.2, 1e-6)
    with pytest.raises(RuntimeError, match="mom must have param's sizes .* and strides"):
        op(p.t().contiguous().t(), acc.t().contiguous().t(), mom, idx, rows, 0.1, 0.2, 1e-6)
    with pytest.raises(RuntimeError, match="rows must have param's dtype BFloat16"):
        op(p, acc, mom, idx, rows.float(), 0.1, 0.2, 1e-6)
    with pytest.raises(RuntimeError, match="param must be float32, float64, bfloat16 or float16"):
        op(p.to(torch.float8_e4m3fn), acc, mom, idx, rows.to(torch.float8_e4m3fn), 0.1, 0.2, 1e-6)
    bad = idx.clone()
    bad[3] = p.shape[0]
    with pytest.raises(RuntimeError, match=r"indices\[3\] = 30 is out of range \[0, 30\)"):
        op(p, acc, mom, bad, rows, 0.1, 0.2, 1e-6)


DENSE_IMPLS = [False, pytest.param(True, marks=pytest.mark.skipif(not DENSE_KERNEL, reason="kernel not built"))]


@pytest.mark.parametrize("kernel", DENSE_IMPLS)
@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("mu", [0.0, 0.4])
def test_dense_update_reduced_precision_keeps_float32_state(kernel, dtype, mu):
    g = torch.Generator().manual_seed(3)
    shapes = [(9, 1000), (37,)]  # several float buffers, and a tail
    params = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    accs = [torch.rand(s, generator=g) for s in shapes]
    moms = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    expect = [adagrad_reference(*t, 0.05, mu) for t in zip(params, accs, moms, grads)]
    dense_adagrad_update_(params, grads, accs, moms, 0.05, mu, use_kernel=kernel)
    ulp = torch.finfo(dtype).eps
    for p, a, v, (ep, ea, ev) in zip(params, accs, moms, expect):
        assert p.dtype == dtype and a.dtype == torch.float32
        assert torch.allclose(p.double(), ep, rtol=ulp, atol=ulp)
        assert torch.allclose(a.double(), ea, rtol=1e-5)
        if mu > 0:
            assert torch.allclose(v.double(), ev, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not (DENSE_KERNEL and SPARSE_KERNEL["cpu"]), reason="kernels not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_kernels_sparse_equals_dense_bitwise(dtype):
    """float32/float64 keep their fast paths: a sparse update of the rows touched once gives, bit
    for bit, the dense update of those rows (one span function for both)."""
    p, acc, mom, _, _ = _case(dtype, "cpu", n=12, d=37, seed=4)
    idx = torch.tensor([5, 0, 11])
    rows = torch.randn(3, 37, dtype=dtype)
    sp = [t.clone() for t in (p, acc, mom)]
    _sparse("cpu", True, *sp, idx, rows, 0.1, 0.3)
    dn = [t[idx].clone() for t in (p, acc, mom)]
    dense_adagrad_update_([dn[0]], [rows], [dn[1]], [dn[2]], 0.1, 0.3, use_kernel=True)
    for s, d in zip(sp, dn):
        assert torch.equal(s[idx], d)


def test_optimizer_state_dtype_and_old_state_dicts_load():
    """AdagradM keeps float32 state for a bf16 parameter; a state dict saved with bf16 state (as
    before) loads, converted."""
    w = torch.randn(4, 3).bfloat16()
    e = torch.randn(10, 3).bfloat16()
    opt = AdagradM({"w": w}, {"e": e}, lr=0.1, momentum=0.2)
    assert {t.dtype for t in [*opt.acc.values(), *opt.mom.values()]} == {torch.float32}
    old = {"acc": {"w": torch.ones(4, 3).bfloat16(), "e": torch.ones(10, 3).bfloat16()},
           "mom": {"w": torch.zeros(4, 3).bfloat16(), "e": torch.zeros(10, 3).bfloat16()}}
    opt.load_state_dict(old)
    assert opt.acc["w"].dtype == torch.float32 and torch.equal(opt.acc["e"], torch.ones(10, 3))
    opt.step_dense([torch.randn(4, 3).bfloat16()])
    opt.step_sparse("e", torch.tensor([1, 1, -1]), torch.randn(3, 3).bfloat16())
    assert w.dtype == torch.bfloat16 and torch.isfinite(w.float()).all()


@pytest.mark.parametrize("kernel", [False, None])
def test_optimizer_column_sparse_parameter(kernel):
    """sparse_columns: step_sparse updates a [D, N] parameter's columns (its state keeps the
    parameter's layout), equal to the row-sparse update of the transposed parameter."""
    torch.manual_seed(5)
    w = torch.randn(6, 15)  # [3H, N]
    wt = w.t().contiguous()
    cols = AdagradM({}, {"w": w}, lr=0.1, momentum=0.3, sparse_columns=["w"], sparse_kernel=kernel)
    rows = AdagradM({}, {"w": wt}, lr=0.1, momentum=0.3, sparse_kernel=kernel)
    for _ in range(3):
        idx, g = torch.randint(-1, 15, (8,)), torch.randn(8, 6)
        cols.step_sparse("w", idx, g)
        rows.step_sparse("w", idx, g)
    assert cols.acc["w"].shape == (6, 15) and cols.acc["w"].is_contiguous()
    assert torch.equal(w, wt.t()) and torch.equal(cols.acc["w"], rows.acc["w"].t())
    with pytest.raises(ValueError, match="sparse_columns"):
        AdagradM({}, {"b": torch.zeros(3)}, lr=0.1, sparse_columns=["b"])


@pytest.mark.skipif(not ext.has_kernel("sparse_adagrad_pair_", "CPU"), reason="kernel not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mu", [0.0, 0.3])
@pytest.mark.parametrize("transposed", [False, True])
def test_cpu_pair_equals_two_sparse_updates_bitwise(dtype, mu, transposed):
    """The CPU sparse_adagrad_pair_ (one grouping of the indices, both tables in one pass) updates
    each table exactly as one sparse_adagrad_ call per table does: repeated indices (summed in
    order of appearance), negative ones, rows that only indices past M2 touch (the second table
    keeps them, momentum included), a transposed first table (columns updated)."""
    g = torch.Generator().manual_seed(3)
    N, D, M, M2 = 40, 9, 70, 45
    st = state_dtype(dtype)
    idx = torch.randint(0, N - 1, (M,), generator=g)
    idx[::7] = -1
    idx[M2 + 3] = idx[M2 + 5] = N - 1  # touched past M2 only
    if transposed:
        param = torch.randn(D, N, generator=g).to(dtype).t()
        acc, mom = torch.rand(D, N, generator=g).to(st).t(), torch.randn(D, N, generator=g).to(st).t()
    else:
        param = torch.randn(N, D, generator=g).to(dtype)
        acc, mom = torch.rand(N, D, generator=g).to(st), torch.randn(N, D, generator=g).to(st)
    param2 = torch.randn(N, 1, generator=g).to(dtype)
    acc2, mom2 = torch.rand(N, 1, generator=g).to(st), torch.randn(N, 1, generator=g).to(st)
    rows, rows2 = torch.randn(M, D, generator=g).to(dtype), torch.randn(M2, 1, generator=g).to(dtype)
    empty = torch.empty(0, 1, dtype=st)

    def clones():
        return [t.clone() if not transposed or k > 2 else t.t().clone().t()
                for k, t in enumerate((param, acc, mom, param2, acc2, mom2))]

    a = clones()
    torch.ops.gru4rec.sparse_adagrad_pair_(a[0], a[1], a[2] if mu else empty, a[3], a[4], a[5] if mu else empty,
                                           idx, rows, rows2, 0.07, mu, 1e-6)
    b = clones()
    torch.ops.gru4rec.sparse_adagrad_(b[0], b[1], b[2] if mu else empty, idx, rows, 0.07, mu, 1e-6)
    torch.ops.gru4rec.sparse_adagrad_(b[3], b[4], b[5] if mu else empty, idx[:M2].contiguous(), rows2, 0.07, mu,
                                      1e-6)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert torch.equal(a[3][N - 1], param2[N - 1]) and not torch.equal(a[0][N - 1], param[N - 1])


@pytest.mark.skipif(not ext.has_kernel("sparse_adagrad_pair_", "CPU"), reason="kernel not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_pair_over_the_pool_equals_two_sparse_updates_bitwise(threads):
    """At the training step's shapes (Wy rows [M, 224] at the scored items and the input rows, By
    at the scored items, the first M2): many groups split over the pool's threads, repeats inside
    and across the two parts of the indices."""
    before = ext.get_num_threads()
    ext.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(11)
        N, D, M2, B = 6000, 224, 2100, 80
        idx = torch.cat([torch.randint(0, N, (M2,), generator=g), torch.randint(0, N, (B,), generator=g)])
        idx[5] = idx[M2 + 1] = idx[M2 - 1]  # repeated within the first M2 and after it
        tables = [torch.randn(N, D, generator=g), torch.rand(N, D, generator=g), torch.randn(N, D, generator=g),
                  torch.randn(N, 1, generator=g), torch.rand(N, 1, generator=g), torch.randn(N, 1, generator=g)]
        rows, rows2 = torch.randn(M2 + B, D, generator=g), torch.randn(M2, 1, generator=g)
        a = [t.clone() for t in tables]
        torch.ops.gru4rec.sparse_adagrad_pair_(*a, idx, rows, rows2, 0.05, 0.4, 1e-6)
        b = [t.clone() for t in tables]
        torch.ops.gru4rec.sparse_adagrad_(b[0], b[1], b[2], idx, rows, 0.05, 0.4, 1e-6)
        torch.ops.gru4rec.sparse_adagrad_(b[3], b[4], b[5], idx[:M2].contiguous(), rows2, 0.05, 0.4, 1e-6)
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    finally:
        ext.set_num_threads(before)
