"""gru4rec::sampled_loss_forward/backward against the pure-PyTorch reference (SPEC section 4)."""
import math

import pytest
import torch

import gru4rec_ext._extension as ext
from conftest import CUDA, needs_extension, rel_err
from gru4rec_ext.nn_loss import SampledRankingLoss
from gru4rec_ext.ops import sampled_loss as sl
from gru4rec_ext.ops.sampled_loss import (sampled_loss_backward, sampled_loss_forward,
                                          sampled_ranking_loss)
from gru4rec_ext.reference_loss import ranking_loss_from_rows, sampled_ranking_loss_reference

LOSSES = ["bpr", "top1", "bpr-max", "top1-max", "cross-entropy"]
ACTIVATIONS = ["linear", "tanh", "elu-0.5"]

pytestmark = needs_extension()


def make_inputs(B, K, H, N, *, device, dtype=torch.float32, scale=1.0, seed=0):
    """Random inputs with duplicates: targets repeat, samples repeat targets and each other."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, H, generator=g, dtype=torch.float64) * scale
    weight = torch.randn(N, H, generator=g, dtype=torch.float64) * scale / math.sqrt(H)
    bias = torch.randn(N, generator=g, dtype=torch.float64) * 0.1
    targets = torch.randint(0, N, (B,), generator=g)
    samples = torch.randint(0, N, (K,), generator=g)
    if K and B:
        n = min(K, B) // 2 + 1
        samples[:n] = targets[torch.randint(0, B, (n,), generator=g)]
    log_q = torch.randn(B + K, generator=g, dtype=torch.float64) - 3.0
    valid = torch.rand(B, generator=g) < 0.8
    valid[0] = True
    to = dict(device=device, dtype=dtype)
    return dict(hidden=hidden.to(**to), weight=weight.to(**to), bias=bias.to(**to),
                targets=targets.to(device), samples=samples.to(device), log_q=log_q.to(**to),
                valid=valid.to(device))


def options(loss, activation, mask, inputs, with_valid=True):
    opts = dict(loss=loss, activation=activation, bpreg=0.25 if loss == "bpr-max" else 0.0,
                mask_accidental_hits=mask)
    if loss == "cross-entropy":
        opts.update(logq=0.5, log_q=inputs["log_q"])
    if with_valid:
        opts["valid"] = inputs["valid"]
    return opts


def loss_and_grads(fn, inputs, opts, dtype=None):
    """fn's loss and its gradients w.r.t. hidden, weight and bias (inputs cast to dtype)."""
    t = {k: v.detach().clone() for k, v in inputs.items()}
    if dtype is not None:
        for k in ("hidden", "weight", "bias", "log_q"):
            t[k] = t[k].to(dtype)
        if "log_q" in opts:
            opts = dict(opts, log_q=t["log_q"])
    params = [t[k].requires_grad_() for k in ("hidden", "weight", "bias")]
    out = fn(*params, t["targets"], t["samples"], **opts)
    return out.detach(), torch.autograd.grad(out, params)


def assert_close_to_reference(inputs, opts, tol=1e-5):
    ours, ours_g = loss_and_grads(sampled_ranking_loss, inputs, opts)
    ref, ref_g = loss_and_grads(sampled_ranking_loss_reference, inputs, opts, dtype=torch.float64)
    assert torch.isfinite(ours) and all(torch.isfinite(g).all() for g in ours_g)
    assert rel_err(ours, ref) < tol, (ours.item(), ref.item())
    for name, a, b in zip(("hidden", "weight", "bias"), ours_g, ref_g):
        assert rel_err(a, b) < tol, f"grad of {name}: rel err {rel_err(a, b):.2e}"


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_float32_matches_reference(device, loss, activation, mask):
    inputs = make_inputs(19, 37, 8, 50, device=device, seed=10 * LOSSES.index(loss) + 2 * ACTIVATIONS.index(activation) + mask)
    assert_close_to_reference(inputs, options(loss, activation, mask, inputs))


@pytest.mark.parametrize("draw", range(5))
def test_float32_random_shapes(device, draw):
    g = torch.Generator().manual_seed(100 + draw)
    B = int(torch.randint(1, 513, (1,), generator=g))
    K = [0, int(torch.randint(1, 4097, (1,), generator=g)), 4096, 2048, 1000][draw]
    H = int(torch.randint(1, 65, (1,), generator=g))
    loss, activation = LOSSES[draw % 5], ACTIVATIONS[draw % 3]
    inputs = make_inputs(B, K, H, 3000, device=device, seed=draw)
    assert_close_to_reference(inputs, options(loss, activation, draw % 2 == 1, inputs))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_float64(device, loss, activation):
    inputs = make_inputs(4, 6, 3, 9, device=device, dtype=torch.float64, seed=7)
    opts = options(loss, activation, True, inputs)
    params = [inputs[k].requires_grad_() for k in ("hidden", "weight", "bias")]
    fn = lambda h, w, b: sampled_ranking_loss(h, w, b, inputs["targets"], inputs["samples"], **opts)
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_row_sparse_pair_matches_autograd(device, loss):
    inputs = make_inputs(16, 40, 8, 30, device=device, seed=3)
    opts = options(loss, "tanh", True, inputs)
    dense, dense_g = loss_and_grads(sampled_ranking_loss, inputs, opts)
    state = sampled_loss_forward(inputs["hidden"], inputs["weight"], inputs["bias"],
                                 inputs["targets"], inputs["samples"], **opts)
    grad_loss = torch.tensor(2.5, device=device)
    g_h, cands, g_w_rows, g_b_rows = sampled_loss_backward(state, grad_loss)
    assert torch.equal(cands, torch.cat((inputs["targets"], inputs["samples"])))
    assert g_w_rows.shape == (56, 8) and g_b_rows.shape == (56,)
    g_w = torch.zeros_like(inputs["weight"]).index_add_(0, cands, g_w_rows)
    g_b = torch.zeros_like(inputs["bias"]).index_add_(0, cands, g_b_rows)
    assert rel_err(state.loss, dense) < 1e-6
    for a, b in zip((g_h, g_w, g_b), dense_g):
        assert rel_err(a, 2.5 * b) < 1e-6
    g_h1, _, _, _ = sampled_loss_backward(state)  # grad_loss defaults to 1
    assert rel_err(g_h1, dense_g[0]) < 1e-6


def test_reference_fallback_pair(device, monkeypatch):
    """Without a kernel the pair runs the reference and gives the same row gradients."""
    inputs = make_inputs(8, 20, 5, 25, device=device, seed=4)
    opts = options("bpr-max", "linear", True, inputs)
    args = [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]
    state = sampled_loss_forward(*args, **opts)
    fused = sampled_loss_backward(state)
    monkeypatch.setattr(sl, "_kernel_ok", {device.type: False})
    ref_state = sampled_loss_forward(*args, **opts)
    ref = sampled_loss_backward(ref_state)
    assert rel_err(state.loss, ref_state.loss) < 1e-6
    for a, b in zip(fused, ref):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("loss", LOSSES)
def test_rows_without_negatives(device, loss):
    """B=1, K=0: no negatives; ranking losses count 0, cross-entropy over one column is 0."""
    inputs = make_inputs(1, 0, 4, 5, device=device)
    out, grads = loss_and_grads(sampled_ranking_loss, inputs, options(loss, "linear", False, inputs))
    assert out.item() == 0.0
    assert all((g == 0).all() for g in grads)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_stable_for_huge_scores(device, loss, activation):
    """|scores| up to about 1e4 in float32: finite loss and gradients."""
    inputs = make_inputs(32, 200, 16, 100, device=device, scale=60.0, seed=5)
    raw = inputs["hidden"] @ inputs["weight"].t()
    assert 3e3 < raw.abs().max() < 3e4
    out, grads = loss_and_grads(sampled_ranking_loss, inputs, options(loss, activation, True, inputs))
    assert torch.isfinite(out), out
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_nan_score_propagates(device, loss, activation):
    """A NaN score of a negative column makes the loss NaN (never silently dropped)."""
    inputs = make_inputs(6, 9, 4, 40, device=device)
    inputs["samples"][-1] = 39
    inputs["weight"][39] = float("nan")
    args = [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]
    out = sampled_ranking_loss(*args, loss=loss, activation=activation)
    assert torch.isnan(out)


def test_opcheck(device):
    inputs = make_inputs(6, 10, 4, 20, device=device, seed=6)
    cands = torch.cat((inputs["targets"], inputs["samples"]))
    h, w, b = (inputs[k].requires_grad_() for k in ("hidden", "weight", "bias"))
    fwd_args = (h, w, b, cands, inputs["log_q"], inputs["valid"], 4, 1, 1.0, 0.0, 0.5, True)
    torch.library.opcheck(torch.ops.gru4rec.sampled_loss_forward.default, fwd_args)
    _, ws = torch.ops.gru4rec.sampled_loss_forward(*[a.detach() if isinstance(a, torch.Tensor) else a
                                                     for a in fwd_args])
    bwd_args = (torch.tensor(1.0, device=device), h.detach(), w.detach(), b.detach(), cands,
                inputs["log_q"], inputs["valid"], 4, 1, 1.0, 0.0, 0.5, True, ws)
    torch.library.opcheck(torch.ops.gru4rec.sampled_loss_backward.default, bwd_args)


def test_module(device):
    inputs = make_inputs(5, 9, 4, 20, device=device)
    mod = SampledRankingLoss("top1-max", activation="tanh", mask_accidental_hits=True)
    args = [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]
    out = mod(*args, valid=inputs["valid"])
    ref = sampled_ranking_loss_reference(*args, loss="top1-max", activation="tanh",
                                         mask_accidental_hits=True, valid=inputs["valid"])
    assert rel_err(out, ref) < 1e-5
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*bpr-max"):
        SampledRankingLoss("hinge")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_bfloat16(device, loss, activation):
    """bf16 kernels (float arithmetic) against the float64 reference on the same bf16 values."""
    inputs = make_inputs(64, 512, 32, 400, device=device, seed=8)
    low = {k: v.bfloat16() if v.is_floating_point() else v for k, v in inputs.items()}
    opts = options(loss, activation, True, low)
    ours, ours_g = loss_and_grads(sampled_ranking_loss, low, opts)
    assert ours.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in ours_g)
    ref, ref_g = loss_and_grads(sampled_ranking_loss_reference, low, opts, dtype=torch.float64)
    assert rel_err(ours, ref) < 2e-2
    for a, b in zip(ours_g, ref_g):
        assert rel_err(a, b) < 5e-2


def elu_far_below_zero_case(device="cpu"):
    """Cross-entropy over elu scores from -30 to 2: the op's arguments (float32) and the float64
    reference dL/dweight_rows [C,H]. hidden's rows are unit vectors, so entry (j, b) of the row
    gradients is dL/dS[b, j] = g * alpha exp(S[b, j]) below 0: 2e-9 at -20, where alpha + r
    (r = alpha expm1(x) = -alpha in float) is 0."""
    scores = torch.tensor([[-20.0, 2.0, -18.0, -25.0, 0.5, -30.0],
                           [1.0, -19.0, 0.3, -22.0, -17.5, 0.2]], dtype=torch.float64)
    B, N, H = 2, 6, 4
    weight = torch.zeros(N, H, dtype=torch.float64)
    weight[:, :B] = scores.t()
    hidden = torch.eye(B, H, dtype=torch.float64)
    bias = torch.zeros(N, dtype=torch.float64)
    cands = torch.arange(N)  # targets 0, 1; samples 2..5
    rows = weight[cands].requires_grad_()
    loss = ranking_loss_from_rows(hidden, rows, bias[cands], cands, loss_code_=4, activation_code_=2,
                                  elu_alpha=0.7, bpreg=0.0, logq=0.0)
    ref_rows = torch.autograd.grad(loss, rows)[0]
    tensors = [t.float().to(device) for t in (hidden, weight, bias)] + [cands.to(device), None, None]
    return tensors, [4, 2, 0.7, 0.0, 0.0, False], ref_rows


def assert_rows_close_elementwise(grad_rows, ref_rows):
    ours = grad_rows.double().cpu()
    assert ((ours - ref_rows).abs() <= 1e-4 * ref_rows.abs()).all(), (ours, ref_rows)


def test_elu_gradient_far_below_zero(device):
    """elu'(x) = alpha exp(x), computed as such: every dL/dS keeps its digits down to x = -30."""
    tensors, scalars, ref_rows = elu_far_below_zero_case(device)
    _, ws = torch.ops.gru4rec.sampled_loss_forward(*tensors, *scalars)
    one = torch.ones((), device=device)
    _, grad_rows, _ = torch.ops.gru4rec.sampled_loss_backward(one, *tensors, *scalars, ws)
    assert_rows_close_elementwise(grad_rows, ref_rows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
@pytest.mark.parametrize("where", ["kernel", "fake"])
def test_half_and_float8_rejected(device, dtype, where):
    """Half and float8 are refused naming hidden, by the kernels and the fake kernels alike."""
    on = "meta" if where == "fake" else device
    inputs = make_inputs(4, 6, 3, 10, device="cpu")
    h, w, b = (inputs[k].to(on, dtype) for k in ("hidden", "weight", "bias"))
    cands = torch.cat((inputs["targets"], inputs["samples"])).to(on)
    scalars = (0, 0, 1.0, 0.0, 0.0, False)
    with pytest.raises(RuntimeError, match="hidden has dtype"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, cands, None, None, *scalars)
    with pytest.raises(RuntimeError, match="hidden has dtype"):
        torch.ops.gru4rec.sampled_loss_backward(torch.ones((), device=on), h, w, b, cands, None,
                                                None, *scalars, h.new_empty(34))


# ---- bad input: clear errors naming the argument ----

def _args(device, **over):
    inputs = make_inputs(4, 6, 3, 10, device=device)
    inputs.update(over)
    return [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]


@pytest.mark.parametrize("which,value", [("targets", 10), ("targets", -1), ("samples", 10),
                                         ("samples", -3)])
def test_error_id_out_of_range(which, value):
    # CPU only: on CUDA a bad id trips the gather's device-side assert (no host sync per step).
    args = _args("cpu")
    i = 3 if which == "targets" else 4
    args[i] = args[i].clone()
    args[i][1] = value
    with pytest.raises(RuntimeError, match="candidates \\(targets, samples\\) hold .*item id"):
        sampled_ranking_loss(*args)


def test_error_dtype_mismatch():
    args = _args("cpu")
    args[1] = args[1].double()
    with pytest.raises(RuntimeError, match="weight dtype Double differs from hidden dtype Float"):
        sampled_ranking_loss(*args)
    args = _args("cpu")
    args[3] = args[3].int()
    with pytest.raises(TypeError, match="targets must be a 1-D int64"):
        sampled_ranking_loss(*args)


def test_error_device_mismatch():
    args = _args("cpu")
    other = "cuda" if CUDA else "meta"
    args[1] = args[1].to(other)
    with pytest.raises(RuntimeError, match="weight is on"):
        sampled_ranking_loss(*args)


def test_error_hidden_size_mismatch():
    args = _args("cpu")
    args[1] = torch.randn(10, 5)
    with pytest.raises(RuntimeError, match="weight has H=5 columns but hidden has H=3"):
        sampled_ranking_loss(*args)


def test_error_bias_size():
    args = _args("cpu")
    args[2] = torch.randn(9)
    with pytest.raises(RuntimeError, match="bias has 9 entries but weight has N=10"):
        sampled_ranking_loss(*args)


def test_error_names():
    args = _args("cpu")
    with pytest.raises(ValueError, match="unknown loss 'bpr_max'.*bpr-max.*cross-entropy"):
        sampled_ranking_loss(*args, loss="bpr_max")
    with pytest.raises(ValueError, match="unknown activation 'relu'.*linear, tanh, elu"):
        sampled_ranking_loss(*args, activation="relu")
    with pytest.raises(ValueError, match="log_q is required"):
        sampled_ranking_loss(*args, loss="xe", logq=1.0)


def test_error_valid_shape_and_op_checks():
    args = _args("cpu")
    with pytest.raises(RuntimeError, match="valid must be \\[B=4\\]"):
        sampled_ranking_loss(*args, valid=torch.ones(3, dtype=torch.bool))
    h, w, b, t, _ = args
    with pytest.raises(RuntimeError, match="candidates has C=2 entries, fewer than the B=4"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, t[:2], None, None, 4, 0, 1.0, 0.0, 0.0,
                                               False)
    with pytest.raises(RuntimeError, match="log_q is required"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, t, None, None, 4, 0, 1.0, 0.0, 1.0, False)
    with pytest.raises(RuntimeError, match="unknown loss code 7"):
        torch.ops.gru4rec.sampled_loss_forward(h, w, b, t, None, None, 7, 0, 1.0, 0.0, 0.0, False)


def test_fallback_to_reference_is_logged_once(monkeypatch, caplog):
    """Without a kernel for the device the reference runs, and the fallback is logged once."""
    monkeypatch.setattr(ext, "has_kernel", lambda op, key: False)
    monkeypatch.setattr(ext, "_warned", set())
    monkeypatch.setattr(sl, "_kernel_ok", {})
    inputs = make_inputs(5, 7, 4, 12, device="cpu")
    args = [inputs[k] for k in ("hidden", "weight", "bias", "targets", "samples")]
    with caplog.at_level("WARNING", logger="gru4rec_ext"):
        out1 = sampled_ranking_loss(*args, loss="top1")
        out2 = sampled_ranking_loss(*args, loss="top1")
    assert len(caplog.records) == 1
    assert "sampled_loss_forward runs the pure-PyTorch reference" in caplog.records[0].getMessage()
    ref = sampled_ranking_loss_reference(*args, loss="top1")
    assert torch.equal(out1, ref) and torch.equal(out2, ref)


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("loss", LOSSES)
def test_invalid_row_is_absent(device, loss, mask):
    """An invalid row (epoch tail) takes no part: the summed loss and its gradients equal those of
    the batch without that row (its target column is not a negative of the others)."""
    inputs = make_inputs(6, 20, 5, 30, device=device, seed=11)
    inputs["valid"] = torch.tensor([True, True, False, True, False, True], device=device)
    opts = options(loss, "tanh", mask, inputs)
    full, full_g = loss_and_grads(sampled_ranking_loss, inputs, opts)
    keep = inputs["valid"]
    shrunk = dict(inputs, hidden=inputs["hidden"][keep], targets=inputs["targets"][keep])
    shrunk_opts = dict(opts, valid=None)
    if "log_q" in opts:
        shrunk_opts["log_q"] = torch.cat([inputs["log_q"][:6][keep], inputs["log_q"][6:]])
    part, part_g = loss_and_grads(sampled_ranking_loss, shrunk, shrunk_opts)
    assert rel_err(full * 6, part * 4) < 1e-5
    assert rel_err(full_g[0][keep] * 6, part_g[0] * 4) < 1e-5 and (full_g[0][~keep] == 0).all()
    for a, b in zip(full_g[1:], part_g[1:]):
        assert rel_err(a * 6, b * 4) < 1e-5


# ---- gru4rec::sampled_ranking_loss: the differentiable op (C++ autograd Function) ----

@pytest.mark.parametrize("with_options", [False, True])
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_opcheck_differentiable_op(device, with_options, sparse_grad):
    inputs = make_inputs(6, 10, 4, 20, device=device, seed=9)
    h, w, b = (inputs[k].requires_grad_() for k in ("hidden", "weight", "bias"))
    optional = (inputs["log_q"], inputs["valid"]) if with_options else (None, None)
    args = (h, w, b, inputs["targets"], inputs["samples"], *optional, 4 if with_options else 2, 1,
            1.0, 0.5, 0.5, with_options, sparse_grad)
    torch.library.opcheck(torch.ops.gru4rec.sampled_ranking_loss.default, args)


def test_double_backward_raises():
    inputs = make_inputs(4, 6, 3, 9, device="cpu", dtype=torch.float64)
    params = [inputs[k].requires_grad_() for k in ("hidden", "weight", "bias")]
    loss = sampled_ranking_loss(*params, inputs["targets"], inputs["samples"], loss="bpr-max")
    once = torch.autograd.grad(loss, params, retain_graph=True)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    for a, b in zip(grads, once):
        assert torch.equal(a.detach(), b)
    with pytest.raises(RuntimeError, match="sampled_ranking_loss: double backward .* not supported"):
        grads[1].sum().backward()


@pytest.mark.parametrize("wanted", [("hidden",), ("weight",), ("bias",), ("weight", "bias")])
def test_needs_input_grad_honoured(wanted):
    inputs = make_inputs(5, 8, 4, 15, device="cpu", seed=12)
    params = {k: inputs[k].clone().requires_grad_(k in wanted) for k in ("hidden", "weight", "bias")}
    loss = sampled_ranking_loss(*params.values(), inputs["targets"], inputs["samples"], loss="top1")
    loss.backward()
    _, ref_g = loss_and_grads(sampled_ranking_loss_reference, inputs, dict(loss="top1"))
    for (name, p), ref in zip(params.items(), ref_g):
        if name in wanted:
            assert rel_err(p.grad, ref) < 1e-5, name
        else:
            assert p.grad is None, name


def test_error_samples_dtype_names_the_argument():
    args = _args("cpu")
    args[4] = args[4].float()
    with pytest.raises(TypeError, match="samples must be a 1-D int64"):
        sampled_ranking_loss(*args)
