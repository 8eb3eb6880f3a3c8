"""GRU4Rec model: parameters and init (SPEC sections 3, 5), inference step, kernels == reference."""
import math

import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext.model import GRU4Rec, parse_activation
from gru4rec_ext.train import OutputLoss, compute_step

from conftest import needs_extension, rel_err


def test_parameters_shared_embedding():
    m = GRU4Rec(50, [16], backend="reference")
    assert m.input_mode == "shared" and m.variants == ("cudnn",)
    assert m.Wy.shape == (50, 16) and m.By.shape == (50,) and m.E is None
    assert m.weight_ih_l0.shape == (48, 16) and m.weight_hh_l0.shape == (48, 16)


def test_parameters_separate_and_onehot():
    m = GRU4Rec(50, [16, 16], constrained_embedding=False, embedding=8, backend="reference")
    assert m.input_mode == "embedding" and m.E.shape == (50, 8) and m.weight_ih_l0.shape == (48, 8)
    assert m.weight_ih_l1.shape == (48, 16) and m.variants == ("cudnn", "cudnn")
    m = GRU4Rec(50, [16, 16], constrained_embedding=False, backend="reference")
    assert m.input_mode == "onehot" and m.weight_ih_l0.shape == (48, 50)
    assert m.variants == ("gru4rec", "cudnn")  # the authors' cells
    assert GRU4Rec(50, [16], constrained_embedding=False, variant="cudnn", backend="reference").variants == ("cudnn",)


def test_init_per_gate_block():
    torch.manual_seed(0)
    n, h = 300, 40
    m = GRU4Rec(n, [h], backend="reference")
    s_table = math.sqrt(6 / (n + h))
    assert m.Wy.abs().max() <= s_table and m.Wy.abs().max() > 0.9 * s_table
    s_gate = math.sqrt(6 / (h + h))  # each [H, in] block on its own, not the [3H, in] matrix
    for w in (m.weight_ih_l0, m.weight_hh_l0):
        assert w.abs().max() <= s_gate and w.abs().max() > 0.9 * s_gate
        assert abs(w.std().item() - s_gate / math.sqrt(3)) < 0.05 * s_gate
    for b in (m.By, m.bias_ih_l0, m.bias_hh_l0):
        assert torch.count_nonzero(b) == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[16, 8]), "same size"), (dict(layers=[0]), "positive"), (dict(dropout_p_hidden=1.0), "dropout_p_hidden"),
    (dict(final_activation="relu"), "final_activation"), (dict(variant="lstm"), "variant"),
    (dict(backend="gpu"), "backend"), (dict(embedding=-1), "embedding")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRU4Rec(10, **{"layers": [8], **kwargs})


def test_parse_activation():
    assert parse_activation("elu-0.5") == ("elu", 0.5)
    assert parse_activation("tanh") == ("tanh", 1.0)
    with pytest.raises(ValueError):
        parse_activation("elu-x")


def test_step_matches_nn_gru_without_resets():
    torch.manual_seed(1)
    m = GRU4Rec(30, [12], backend="reference").eval()
    gru = torch.nn.GRU(12, 12)
    with torch.no_grad():
        m.bias_ih_l0 += 0.1  # non-zero biases, so their layout is checked too
        m.bias_hh_l0 -= 0.05
    gru.load_state_dict({k: getattr(m, k).detach() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")})
    ids = torch.randint(0, 30, (5, 4))
    h = m.init_hidden(4)
    outs = []
    for t in range(5):
        out, h = m.step(ids[t], torch.zeros(4, dtype=torch.bool), h)
        outs.append(out)
    expect, _ = gru(m.Wy.detach()[ids])
    assert rel_err(torch.stack(outs), expect.detach()) < 1e-5


def test_step_reset_zeroes_rows():
    torch.manual_seed(2)
    m = GRU4Rec(30, [8, 8], backend="reference").eval()
    ids = torch.tensor([3, 4, 5])
    h = torch.randn(2, 3, 8)
    reset = torch.tensor([True, False, True])
    out, h2 = m.step(ids, reset, h)
    out0, h0 = m.step(ids, torch.zeros(3, dtype=torch.bool), h * (~reset).float().view(1, 3, 1))
    assert torch.allclose(h2, h0) and torch.allclose(out, out0) and torch.equal(out, h2[-1])


def _dense_grads(model, dense, sparse):
    out = {k: v.clone() for k, v in dense.items()}
    for name, (idx, rows) in sparse.items():
        p = getattr(model, name)
        live = idx >= 0  # -1: rows the step does not update (epoch tail)
        dim = 1 if name.startswith("weight_ih") else 0  # one-hot input: the columns of weight_ih [3H, N]
        out[name] = torch.zeros_like(p).index_add_(dim, idx[live], rows[live].t() if dim else rows[live])
    return out


@needs_extension()
@pytest.mark.parametrize("loss, act, mode", [("cross-entropy", "linear", "shared"), ("bpr-max", "elu-1", "shared"),
                                             ("top1-max", "tanh", "embedding"), ("bpr", "linear", "onehot")])
def test_kernels_equal_reference_one_step(loss, act, mode):
    if not (ext.has_kernel("session_gru_forward", "CPU") and ext.has_kernel("sampled_loss_forward", "CPU")):
        pytest.skip("the GRU or loss kernels are not built")
    torch.manual_seed(3)
    kw = dict(constrained_embedding=mode == "shared", layers=[10, 10] if mode == "onehot" else [10], embedding=6 if mode == "embedding" else 0,
              dropout_p_embed=0.3, dropout_p_hidden=0.2)
    ref = GRU4Rec(40, final_activation=act, backend="reference", **kw)
    ker = GRU4Rec(40, final_activation=act, backend="kernels", **kw)
    ker.load_state_dict(ref.state_dict())
    b, k = 6, 9
    inputs, targets = torch.randint(0, 40, (b,)), torch.randint(0, 40, (b,))
    reset = torch.tensor([True, False, False, True, False, False])
    valid = torch.tensor([True] * 5 + [False])
    samples = torch.randint(0, 40, (k,))
    hidden = torch.randn(len(ref.layers), b, 10) * 0.5
    log_q = torch.randn(b + k) if loss == "cross-entropy" else None
    results = []
    for m in (ref, ker):
        ol = OutputLoss(m, loss=loss, bpreg=0.5, logq=1.0 if log_q is not None else 0.0, mask_accidental_hits=False)
        torch.manual_seed(11)  # the same dropout masks for both backends
        loss_v, h, dense, sparse = compute_step(m, ol, inputs, targets, reset, valid, samples, hidden, log_q)
        results.append((loss_v, h, _dense_grads(m, dense, sparse)))
    (l0, h0, g0), (l1, h1, g1) = results
    assert abs(l0.item() - l1.item()) <= 1e-5 * max(1.0, abs(l0.item()))
    assert rel_err(h1, h0) < 1e-5
    assert set(g0) == set(g1)
    for name in g0:
        assert rel_err(g1[name], g0[name]) < 1e-4, name
