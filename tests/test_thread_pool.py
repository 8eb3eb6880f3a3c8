"""The CPU kernels' own thread pool (csrc/cpu/thread_pool.h) and the split matrix products.

The ops must give the same results with 1 and 2 pool threads (up to the rounding of BLAS calls on
different shapes), also when called from several Python threads at once, and the thread count is
settable and read back.
"""
import threading

import pytest
import torch

from conftest import needs_extension, rel_err
from gru4rec_ext import _extension
from gru4rec_ext.ops.sampled_loss import sampled_loss_backward, sampled_loss_forward

pytestmark = needs_extension()


@pytest.fixture
def pool_threads():
    """Restores the pool's thread count after the test."""
    before = _extension.get_num_threads()
    yield _extension.set_num_threads
    _extension.set_num_threads(before)


def gru_step(seed, B=80, H=224, T=3, ids=False):
    g = torch.Generator().manual_seed(seed)
    N = 500
    x = torch.randint(0, N, (T, B), generator=g) if ids else torch.randn(T, B, H, generator=g)
    args = (x, torch.rand(T, B, generator=g) < 0.3, torch.randn(B, H, generator=g),
            torch.randn(3 * H, N if ids else H, generator=g) * 0.1, torch.randn(3 * H, H, generator=g) * 0.1,
            torch.randn(3 * H, generator=g), torch.randn(3 * H, generator=g))
    fwd = torch.ops.gru4rec.session_gru_forward.default
    bwd = torch.ops.gru4rec.session_gru_backward.default
    results = []
    for variant in (0, 1):
        out, h_n, ws = fwd(*args, variant)
        go = torch.randn(out.shape, generator=g)
        grads = bwd(go, torch.randn(h_n.shape, generator=g), *args, out, ws, variant, True, True)
        results += [out, h_n, *grads]
    return results


def loss_step(seed, B=80, H=224, K=2048, N=5000):
    g = torch.Generator().manual_seed(seed)
    hidden, weight, bias = torch.randn(B, H, generator=g), torch.randn(N, H, generator=g) * 0.1, torch.randn(N, generator=g)
    targets, samples = torch.randint(0, N, (B,), generator=g), torch.randint(0, N, (K,), generator=g)
    state = sampled_loss_forward(hidden, weight, bias, targets, samples, loss="bpr-max", bpreg=0.5,
                                 activation="elu-1", unique_candidates=True)
    grad_hidden, cand, gw, gb = sampled_loss_backward(state)
    return [state.loss, grad_hidden, cand, gw, gb]


@pytest.mark.parametrize("step", [gru_step, loss_step], ids=["session_gru", "sampled_loss"])
def test_same_results_with_one_and_two_threads(pool_threads, step):
    pool_threads(1)
    one = step(0)
    pool_threads(2)
    assert _extension.get_num_threads() == 2
    two = step(0)
    for a, b in zip(one, two):
        if a.is_floating_point():
            assert rel_err(b, a) < 1e-5
        else:
            assert torch.equal(a, b)


def test_concurrent_callers(pool_threads):
    """Two Python threads calling ops at once (the second caller runs its work inline)."""
    pool_threads(2)
    expected = {s: gru_step(s, B=64, H=96) for s in range(4)}
    errors = []

    def worker(seed):
        try:
            for _ in range(3):
                got = gru_step(seed, B=64, H=96)
                assert all(rel_err(b, a) < 1e-5 for a, b in zip(expected[seed], got))
        except Exception as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_set_num_threads_rejects_zero():
    with pytest.raises((RuntimeError, ValueError), match="threads"):
        _extension.set_num_threads(0)


def test_row_gather_over_the_pool_is_index_select(pool_threads):
    """The loss's candidate rows, gathered over the pool's threads into its workspace, are exactly
    index_select's: many chunks, repeated and boundary ids."""
    pool_threads(2)
    g = torch.Generator().manual_seed(3)
    N, H, B = 3000, 224, 64
    hidden, weight, bias = torch.randn(B, H, generator=g), torch.randn(N, H, generator=g), torch.randn(N, generator=g)
    targets = torch.randint(0, N, (B,), generator=g)
    samples = torch.cat([torch.tensor([0, N - 1, N - 1]), torch.randint(0, N, (4000,), generator=g)])
    state = sampled_loss_forward(hidden, weight, bias, targets, samples, loss="cross-entropy")
    cand = state.candidates
    U = cand.numel()
    rows = state._workspace[B * U:B * U + U * H].view(U, H)
    assert torch.equal(rows, weight.index_select(0, cand))


@pytest.mark.parametrize("n,grain", [(80, 73), (14, 3), (5, 1), (2, 1), (3, 1), (17920, 16384), (2138, 73),
                                     (1000, 1), (7, 2), (80, 15)])
def test_parallel_for_chunks_partition_evenly(pool_threads, n, grain):
    """The pool's chunks cover [0, n) once, differ in size by at most one, and come in a multiple
    of the thread count when n allows (80 rows at a grain of 73: 40 and 40, not 73 and 7)."""
    pool_threads(2)
    chunks = sorted(_extension._C._parallel_for_chunks(n, grain))
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    sizes = [end - begin for begin, end in chunks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(chunks) <= 8  # at most 4 per thread
    if n > grain:
        assert len(chunks) % 2 == 0 or len(chunks) == n
    else:
        assert chunks == [(0, n)]
