"""The CPU kernels' own float32 matrix product (csrc/cpu/gemm_avx512.cpp) and the split products
that call it (csrc/cpu/products_cpu.cpp), against float64 products.

Shapes cover every edge of the 8-row, 48-column tiling (1, 7, 8, 9, ... rows; 1, 15, 16, 17, 47,
48, 49, ... columns), K from 0 to past one 16-wide packing block, both layouts of each operand
(row-major, or a transposed view), out with a row stride wider than its columns, and the three
initialisations (zero, accumulate into out, bias on every row). The product's elements must not
depend on how it is split into pieces: one 2-thread product equals the one-thread one bit for bit.
"""
import itertools

import pytest
import torch

from conftest import needs_extension, rel_err
from gru4rec_ext import _extension

pytestmark = needs_extension()

C = _extension._C
OWN = C is not None and C.cpu_gemm() == "avx512"
needs_avx512 = pytest.mark.skipif(
    C is None or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
    reason="needs an AVX-512 CPU")


def operand(rows, cols, transposed, g):
    """A [rows, cols] float32 operand: contiguous, or the transposed view of a [cols, rows] one."""
    if transposed:
        return torch.randn(cols, rows, generator=g).t()
    return torch.randn(rows, cols, generator=g)


def expected(out0, a, b, accumulate, bias):
    ref = a.double() @ b.double()
    if accumulate:
        ref += out0.double()
    if bias is not None:
        ref += bias.double()
    return ref


def check(fn, M, N, K, a_t, b_t, mode, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = operand(M, K, a_t, g), operand(K, N, b_t, g)
    wide = torch.randn(M, N + 5, generator=g)        # out is a view with row stride N + 5
    out = wide[:, 2:2 + N]
    out0, untouched = out.clone(), (wide[:, :2].clone(), wide[:, 2 + N:].clone())
    bias = torch.randn(N, generator=g) if mode == "bias" else None
    fn(out, a, b, mode == "accumulate", bias)
    ref = expected(out0, a, b, mode == "accumulate", bias)
    # float32 accumulation over K terms of size ~1: error grows like sqrt(K) * eps.
    tol = 1e-5 * max(1.0, K ** 0.5)
    assert (out.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())
    assert torch.equal(wide[:, :2], untouched[0]) and torch.equal(wide[:, 2 + N:], untouched[1])


SHAPES = [(M, N, K) for M, N, K in itertools.product((1, 7, 8, 9, 33), (1, 15, 16, 17, 47, 48, 49, 100),
                                                      (0, 1, 17, 100))]


@needs_avx512
@pytest.mark.parametrize("layout", list(itertools.product((False, True), (False, True))),
                         ids=lambda t: f"a{'T' if t[0] else 'N'}b{'T' if t[1] else 'N'}")
@pytest.mark.parametrize("mode", ["zero", "accumulate", "bias"])
def test_own_gemm_matches_float64(layout, mode):
    for i, (M, N, K) in enumerate(SHAPES):
        check(C._own_gemm_out, M, N, K, *layout, mode, seed=i)


@pytest.mark.parametrize("M,N,K", [(32, 300, 100), (80, 672, 224), (300, 100, 32), (32, 100, 2080),
                                   (2080, 100, 32), (32, 2080, 100)])
@pytest.mark.parametrize("layout", list(itertools.product((False, True), (False, True))),
                         ids=lambda t: f"a{'T' if t[0] else 'N'}b{'T' if t[1] else 'N'}")
def test_split_product_matches_float64(M, N, K, layout):
    """The products of the training step's shapes (rsc15 and retailrocket presets), whichever
    product (ours or BLAS) this CPU takes, split over the pool."""
    for mode in ("zero", "accumulate", "bias"):
        check(C._cpu_mm_out, M, N, K, *layout, mode, seed=M + N + K)


@pytest.fixture
def two_threads():
    before = _extension.get_num_threads()
    _extension.set_num_threads(2)
    yield
    _extension.set_num_threads(before)


@pytest.mark.skipif(not OWN, reason="this CPU takes BLAS, not the package's own product")
@pytest.mark.parametrize("M,N,K", [(80, 672, 224), (672, 224, 80), (2080, 100, 32), (32, 2080, 100),
                                   (80, 224, 2058), (80, 224, 672), (77, 130, 50), (20, 100, 300)])
def test_split_equals_one_piece_bitwise(two_threads, M, N, K):
    g = torch.Generator().manual_seed(M * N)
    for a_t, b_t in itertools.product((False, True), (False, True)):
        a, b, bias = operand(M, K, a_t, g), operand(K, N, b_t, g), torch.randn(N, generator=g)
        split, whole = torch.empty(M, N), torch.empty(M, N)
        C._cpu_mm_out(split, a, b, False, bias)      # 2 pool threads: pieces of rows or columns
        C._own_gemm_out(whole, a, b, False, bias)    # one call on this thread
        assert torch.equal(split, whole)


def test_cpu_gemm_names_the_product():
    assert _extension.cpu_gemm() in ("avx512", "blas")
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        assert _extension.cpu_gemm() == "blas"


@needs_avx512
def test_own_gemm_refuses_what_it_cannot_take():
    with pytest.raises(RuntimeError, match="float32 only"):
        C._own_gemm_out(torch.empty(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64),
                        torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="one unit stride"):
        C._own_gemm_out(torch.empty(4, 4), torch.ones(4, 8)[:, ::2], torch.ones(4, 4))


@pytest.fixture(params=["avx512", "blas"])
def cpu_gemm(request):
    """Runs a test under each CPU matrix product this CPU has (the default restored after)."""
    before = _extension.cpu_gemm()
    if request.param == "avx512" and not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        pytest.skip("needs an AVX-512 CPU")
    _extension.set_cpu_gemm(request.param)
    yield request.param
    _extension.set_cpu_gemm(before)


@pytest.mark.parametrize("variant", ["cudnn", "gru4rec"])
def test_session_gru_under_each_product(cpu_gemm, variant):
    """The fused GRU's forward and gradients against the pure-PyTorch reference, whichever matrix
    product its host code takes (the full kernel suite runs under the default one)."""
    from gru4rec_ext.ops.session_gru import session_gru
    from gru4rec_ext.reference import session_gru_reference
    g = torch.Generator().manual_seed(3)
    T, B, H = 3, 33, 50
    args = [torch.randn(T, B, H, generator=g), torch.rand(T, B, generator=g) < 0.3,
            torch.randn(B, H, generator=g), torch.randn(3 * H, H, generator=g) * 0.2,
            torch.randn(3 * H, H, generator=g) * 0.2, torch.randn(3 * H, generator=g),
            torch.randn(3 * H, generator=g)]
    grads_out = (torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g))
    results = []
    for fn in (session_gru, session_gru_reference):
        leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
        outs = fn(*leaves, variant=variant) if fn is session_gru else fn(*leaves, variant)
        torch.autograd.backward(outs, grads_out)
        results.append(list(outs) + [x.grad for x in leaves if x.requires_grad])
    for ours, ref in zip(*results):
        assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_sampled_loss_under_each_product(cpu_gemm, loss):
    from gru4rec_ext.ops.sampled_loss import sampled_ranking_loss
    from gru4rec_ext.reference_loss import sampled_ranking_loss_reference
    g = torch.Generator().manual_seed(4)
    B, K, H, N = 33, 100, 50, 400
    hidden, weight, bias = (torch.randn(B, H, generator=g), torch.randn(N, H, generator=g) * 0.3,
                            torch.randn(N, generator=g))
    targets, samples = torch.randint(0, N, (B,), generator=g), torch.randint(0, N, (K,), generator=g)
    results = []
    for fn in (sampled_ranking_loss, sampled_ranking_loss_reference):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        value = fn(*leaves, targets, samples, loss=loss, bpreg=0.5 if loss == "bpr-max" else 0.0)
        value.backward()
        results.append([value] + [t.grad for t in leaves])
    for ours, ref in zip(*results):
        assert rel_err(ours, ref) < 1e-5


@pytest.mark.skipif(not OWN, reason="this CPU takes BLAS, not the package's own product")
def test_rows_equal_their_elements_of_the_whole_product_bitwise(two_threads):
    """_own_gemm_rows recomputes single elements of the score product with the same bits, which
    evaluation's one-pass ranks rely on (the target's score read without the whole matrix)."""
    g = torch.Generator().manual_seed(11)
    B, N, H = 37, 1001, 100
    hidden, weight, bias = torch.randn(B, H, generator=g), torch.randn(N, H, generator=g), torch.randn(N, generator=g)
    idx = torch.randint(0, N, (B,), generator=g)
    whole = torch.empty(B, N)
    C._cpu_mm_out(whole, hidden, weight.t(), False, bias)
    assert torch.equal(C._own_gemm_rows(hidden, weight, bias, idx), whole[torch.arange(B), idx])
    with pytest.raises(RuntimeError, match="out of range"):
        C._own_gemm_rows(hidden, weight, bias, torch.full((B,), N))


@pytest.mark.skipif(C is None or not torch.backends.cpu.get_cpu_capability().startswith("AVX"),
                    reason="needs an AVX2 CPU")
@pytest.mark.parametrize("code", [1, 2])
def test_activation_rows_give_equal_scores_equal_values(code):
    """Every element goes through the same vector code, wherever it sits in a row (full vectors
    or the padded tail): equal scores stay equal, so the ranks' ties do not depend on chunking."""
    g = torch.Generator().manual_seed(12)
    values = torch.randn(53, generator=g) * 4
    rows = torch.stack([values.roll(s) for s in range(19)])   # each value at 19 positions
    ref = values.clone()[None, :]
    assert C._activate_rows_(rows, code, 0.5) and C._activate_rows_(ref, code, 0.5)
    for s in range(19):
        assert torch.equal(rows[s], ref[0].roll(s))
    torch_act = torch.tanh(values) if code == 1 else torch.nn.functional.elu(values, alpha=0.5)
    assert torch.allclose(ref[0], torch_act, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("activation", ["linear", "tanh", "elu"])
@pytest.mark.parametrize("chunk_size", [None, 7, 100])
def test_ranks_equal_brute_force_on_float_scores(cpu_gemm, activation, chunk_size):
    """Float scores with ties only where items are identical: the ranks (one pass with the own
    product, two passes over the blocks with BLAS's) equal brute force over the whole activated
    score matrix."""
    from gru4rec_ext.scoring import score_items, target_ranks
    g = torch.Generator().manual_seed(13)
    B, N, H = 21, 700, 40
    hidden, weight, bias = torch.randn(B, H, generator=g) * 0.2, torch.randn(N, H, generator=g), torch.randn(N, generator=g)
    weight[11], bias[11] = weight[4], bias[4]   # (scores of about unit size: tanh does not saturate)
    targets = torch.randint(0, N, (B,), generator=g)
    targets[:2] = torch.tensor([4, 11])
    scores = score_items(hidden, weight, bias, activation=activation, elu_alpha=0.7)
    t = scores[torch.arange(B), targets][:, None]
    gt, eq = (scores > t).sum(1).double(), (scores == t).sum(1).double()
    got = target_ranks(hidden, weight, bias, targets, activation=activation, elu_alpha=0.7,
                       chunk_size=chunk_size)
    assert torch.equal(got["standard"], 1 + gt) and torch.equal(got["conservative"], gt + eq)
    assert eq[:2].tolist() == [2.0, 2.0]
