"""gru4rec::unique_ids and the sampled loss's `columns` path (each distinct candidate gathered,
scored and updated once): equal to the per-column path, which test_sampled_loss.py checks against
the reference."""
import pytest
import torch

from conftest import CUDA, needs_extension, rel_err
from gru4rec_ext.ops.sampled_loss import sampled_loss_backward, sampled_loss_forward
from gru4rec_ext.ops.unique_ids import unique_ids
from test_sampled_loss import ACTIVATIONS, LOSSES, make_inputs, options

pytestmark = needs_extension()


@pytest.mark.parametrize("M,N", [(0, 5), (1, 1), (50, 7), (2080, 2933), (1000, 100000)])
def test_unique_ids(M, N):
    g = torch.Generator().manual_seed(M + N)
    ids = torch.randint(0, N, (M,), generator=g)
    unique, inverse = unique_ids(ids, N)
    assert torch.equal(unique[inverse], ids)
    assert unique.numel() == torch.unique(ids).numel()
    # first-appearance order: the first occurrence of unique[u] comes before that of unique[u + 1]
    first = [int((ids == u).nonzero()[0]) for u in unique[:50]]
    assert first == sorted(first)


def test_unique_ids_errors():
    with pytest.raises(RuntimeError, match=r"ids\[1\] = 9 is out of range \[0, 9\)"):
        torch.ops.gru4rec.unique_ids(torch.tensor([0, 9]), 9)
    with pytest.raises(RuntimeError, match=r"ids\[0\] = -1"):
        torch.ops.gru4rec.unique_ids(torch.tensor([-1]), 9)
    with pytest.raises(RuntimeError, match="ids must be a 1-D int64 tensor"):
        torch.ops.gru4rec.unique_ids(torch.tensor([1, 2], dtype=torch.int32), 9)
    with pytest.raises(TypeError, match="ids must be a 1-D int64 tensor"):
        unique_ids(torch.zeros(2, 2, dtype=torch.int64), 9)


def _pair(inputs, opts, unique):
    args = [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]
    state = sampled_loss_forward(*args, **opts, unique_candidates=unique)
    return state.loss, sampled_loss_backward(state, torch.tensor(1.5, dtype=state.loss.dtype))


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unique_candidates_equal_per_column(loss, activation, mask, dtype):
    """Same loss; per-item sums of the per-column rows equal the distinct rows (CPU)."""
    inputs = make_inputs(23, 300, 12, 60, device="cpu", dtype=dtype,
                         seed=LOSSES.index(loss) * 7 + ACTIVATIONS.index(activation) * 2 + mask)
    opts = options(loss, activation, mask, inputs)
    loss0, (gh0, cand0, gw0, gb0) = _pair(inputs, opts, False)
    loss1, (gh1, cand1, gw1, gb1) = _pair(inputs, opts, True)
    assert cand1.numel() == torch.unique(cand0).numel() < cand0.numel()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel_err(loss1, loss0) < tol
    assert rel_err(gh1, gh0) < tol
    n = inputs["weight"].shape[0]
    dense_w0 = torch.zeros(n, 12, dtype=dtype).index_add_(0, cand0, gw0)
    dense_b0 = torch.zeros(n, dtype=dtype).index_add_(0, cand0, gb0)
    assert rel_err(gw1, dense_w0[cand1]) < tol
    assert rel_err(gb1, dense_b0[cand1]) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_columns_unreferenced_candidate_and_dtypes(dtype):
    """A gathered candidate that no column scores gets zero gradients and changes nothing else;
    bfloat16 rows go through the same column plan as float."""
    inputs = make_inputs(9, 40, 8, 30, device="cpu", dtype=dtype, seed=11)
    cands, cols = unique_ids(torch.cat((inputs["targets"], inputs["samples"])), 30)
    unused = int(next(i for i in range(30) if i not in set(cands.tolist())))
    h, w, b = inputs["hidden"], inputs["weight"], inputs["bias"]
    for loss, activation in ((2, 2), (4, 1), (1, 0)):
        def run(c):
            args = (h, w, b, c, None, inputs["valid"], loss, activation, 0.5, 0.3, 0.0, True, cols)
            value, ws = torch.ops.gru4rec.sampled_loss_forward(*args)
            grads = torch.ops.gru4rec.sampled_loss_backward(torch.tensor(1.0, dtype=dtype), *args[:12], ws, cols)
            return value, grads
        v0, (gh0, gw0, gb0) = run(cands)
        v1, (gh1, gw1, gb1) = run(torch.cat((cands, torch.tensor([unused]))))
        assert gw1.shape[0] == cands.numel() + 1
        assert torch.count_nonzero(gw1[-1]) == 0 and float(gb1[-1]) == 0.0
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
        assert rel_err(v1, v0) < tol and rel_err(gh1, gh0) < tol
        assert rel_err(gw1[:-1], gw0) < tol and rel_err(gb1[:-1], gb0) < tol
        # against the per-column path, summed per item
        ref_v, ref_ws = torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands[cols], None, inputs["valid"], loss,
                                                               activation, 0.5, 0.3, 0.0, True, None)
        assert rel_err(v0, ref_v) < tol


def test_columns_opcheck():
    inputs = make_inputs(6, 10, 4, 8, device="cpu", seed=6)
    cands, cols = unique_ids(torch.cat((inputs["targets"], inputs["samples"])), 8)
    h, w, b = (inputs[k].requires_grad_() for k in ("hidden", "weight", "bias"))
    fwd = (h, w, b, cands, inputs["log_q"], inputs["valid"], 2, 2, 0.5, 0.3, 0.0, True, cols)
    torch.library.opcheck(torch.ops.gru4rec.sampled_loss_forward.default, fwd)
    _, ws = torch.ops.gru4rec.sampled_loss_forward(*[a.detach() if isinstance(a, torch.Tensor) else a for a in fwd])
    assert ws.numel() == 6 * cands.numel() + cands.numel() * 4
    bwd = (torch.tensor(1.0), h.detach(), w.detach(), b.detach(), cands, inputs["log_q"], inputs["valid"],
           2, 2, 0.5, 0.3, 0.0, True, ws, cols)
    torch.library.opcheck(torch.ops.gru4rec.sampled_loss_backward.default, bwd)
    torch.library.opcheck(torch.ops.gru4rec.unique_ids.default, (inputs["samples"], 8))


def test_columns_gradcheck_float64():
    inputs = make_inputs(4, 9, 3, 5, device="cpu", dtype=torch.float64, seed=7)
    cands, cols = unique_ids(torch.cat((inputs["targets"], inputs["samples"])), 5)
    params = [inputs[k].requires_grad_() for k in ("hidden", "weight", "bias")]
    fn = lambda h, w, b: torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands, None, inputs["valid"], 2, 1, 1.0,
                                                                0.5, 0.0, True, cols)[0]
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_columns_errors():
    inputs = make_inputs(4, 6, 3, 10, device="cpu")
    h, w, b = inputs["hidden"], inputs["weight"], inputs["bias"]
    cands = torch.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match=r"columns\[2\] = 3 is out of range for the U=3 candidates"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands, None, None, 0, 0, 1.0, 0.0, 0.0, False,
                                               torch.tensor([0, 1, 3, 2, 0]))
    with pytest.raises(RuntimeError, match="columns has C=3 entries, fewer than the B=4"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands, None, None, 0, 0, 1.0, 0.0, 0.0, False,
                                               torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="columns must be a 1-D int64 tensor"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands, None, None, 0, 0, 1.0, 0.0, 0.0, False,
                                               torch.tensor([0, 1, 2, 2], dtype=torch.int32))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_columns_not_on_cuda_yet():
    inputs = make_inputs(4, 6, 3, 10, device="cuda")
    h, w, b = inputs["hidden"], inputs["weight"], inputs["bias"]
    with pytest.raises(RuntimeError, match="columns is not supported on CUDA yet"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, torch.tensor([1, 2], device="cuda"), None, None, 0, 0, 1.0,
                                               0.0, 0.0, False, torch.tensor([0, 1, 0, 1, 1], device="cuda"))
    # the Python pair ignores unique_candidates on CUDA (per-column rows, as documented)
    state = sampled_loss_forward(h, w, b, inputs["targets"], inputs["samples"], unique_candidates=True)
    assert state.candidates.numel() == 4 + 6
