"""SessionGRU and SampledRankingLoss in a user's model: torch.compile, and the reference fallback."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch._dynamo.testing import CompileCounterWithBackend

from conftest import needs_extension, rel_err
from gru4rec_ext import SampledRankingLoss, SessionGRU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyRecommender(nn.Module):
    """Item ids -> 2-layer SessionGRU -> sampled ranking loss against an output table."""

    def __init__(self, n_items=40, hidden=16):
        super().__init__()
        self.gru = SessionGRU(n_items, hidden, num_layers=2, variant="gru4rec")
        self.out_weight = nn.Parameter(torch.randn(n_items, hidden) * 0.1)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        self.loss = SampledRankingLoss("bpr-max", activation="tanh", bpreg=0.5)

    def forward(self, ids, reset, h0, targets, samples):
        out, h_n = self.gru(ids, reset, h0)
        loss = self.loss(out[-1], self.out_weight, self.out_bias, targets, samples)
        return loss, h_n


def train(model, step_fn, batches, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss, _ = step_fn(*batch)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@needs_extension()
def test_torch_compile_fullgraph_trains_like_eager():
    torch.manual_seed(3)
    eager = TinyRecommender()
    compiled_model = TinyRecommender()
    compiled_model.load_state_dict(eager.state_dict())
    T, B, N, K = 3, 6, 40, 12
    batches = [(torch.randint(0, N, (T, B)), torch.rand(T, B) < 0.3, torch.zeros(2, B, 16),
                torch.randint(0, N, (B,)), torch.randint(0, N, (K,))) for _ in range(4)]
    initial = {k: v.clone() for k, v in eager.state_dict().items()}
    # aot_eager: Dynamo and AOTAutograd (fake kernels, the joint graph through the C++ autograd)
    # without Inductor's code generation, which takes longer than the rest of this file.
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    eager_losses = train(eager, eager, batches)
    compiled_losses = train(compiled_model, compiled, batches)
    assert backend.frame_count == 1
    code = backend.graphs[0].code
    assert "gru4rec.session_gru.default" in code and "gru4rec.sampled_ranking_loss.default" in code
    assert rel_err(compiled_losses, eager_losses) < 1e-5
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        assert not torch.equal(p, initial[name]), name  # it trained
        assert rel_err(q, p) < 1e-5, name


def gradcheck_module(module, args, inputs):
    """float64 gradcheck of module(*args) w.r.t. the tensors `inputs` (those in args that require
    grad) and every parameter, swapped in with functional_call; first, each of them must reach an
    output (autograd.grad raises for one that does not), so the check cannot pass vacuously."""
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in module.parameters())
    n_in = len(inputs)

    def f(*tensors):
        given = iter(tensors[:n_in])
        call_args = [next(given) if any(a is t for t in inputs) else a for a in args]
        out = functional_call(module, dict(zip(names, tensors[n_in:])), tuple(call_args))
        return out if isinstance(out, tuple) else (out,)

    outs = f(*inputs, *params)
    torch.autograd.grad(sum(o.sum() for o in outs), (*inputs, *params))  # every one is used
    return torch.autograd.gradcheck(f, (*inputs, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@needs_extension()
@pytest.mark.parametrize("ids", [False, True], ids=["float", "ids"])
@pytest.mark.parametrize("variant", ["cudnn", "gru4rec"])
def test_gradcheck_session_gru_module(variant, ids):
    """Two stacked layers with resets at set positions, through the C++ autograd in float64."""
    torch.manual_seed(5)
    T, B, E, H, N = 3, 4, 5, 3, 9
    gru = SessionGRU(N if ids else E, H, num_layers=2, variant=variant).double()
    x = torch.randint(0, N, (T, B)) if ids else torch.randn(T, B, E, dtype=torch.float64)
    if ids:
        x[2, 1] = x[0, 1]  # a repeated id: its columns' gradients are summed
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[1, 0] = reset[2, 3] = reset[0, 2] = True
    h0 = torch.randn(2, B, H, dtype=torch.float64, requires_grad=True)
    inputs = (h0,) if ids else (x.requires_grad_(), h0)
    assert gradcheck_module(gru, (x, reset, h0), inputs)


@needs_extension()
@pytest.mark.parametrize("loss", ["bpr", "top1", "bpr-max", "top1-max", "cross-entropy"])
def test_gradcheck_sampled_ranking_loss_module(loss):
    """Each loss with repeated candidates, masked accidental hits and an invalid row; the weight
    and bias tables are the module's parameters here (an output layer owning them)."""
    torch.manual_seed(6)
    B, K, H, N = 4, 6, 3, 9

    class OutputLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(N, H, dtype=torch.float64) / H ** 0.5)
            self.bias = nn.Parameter(torch.randn(N, dtype=torch.float64) * 0.1)
            self.loss = SampledRankingLoss(loss, activation="tanh" if loss == "bpr" else "linear",
                                           bpreg=0.25 if loss == "bpr-max" else 0.0,
                                           logq=0.5 if loss == "cross-entropy" else 0.0,
                                           mask_accidental_hits=True)

        def forward(self, hidden, targets, samples, log_q, valid):
            return self.loss(hidden, self.weight, self.bias, targets, samples, log_q, valid)

    hidden = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 7])
    samples = torch.tensor([3, 1, 8, 1, 0, 5])  # hits targets, repeats itself
    log_q = (torch.randn(B + K, dtype=torch.float64) - 3.0) if loss == "cross-entropy" else None
    valid = torch.tensor([True, True, False, True])
    assert gradcheck_module(OutputLayer(), (hidden, targets, samples, log_q, valid), (hidden,))


def test_modules_without_the_extension():
    """With gru4rec_ext._C missing, both modules run (forward and backward) on the references."""
    code = textwrap.dedent("""
        import sys, torch
        sys.modules["gru4rec_ext._C"] = None  # the import fails, as for an unbuilt checkout
        from gru4rec_ext import SampledRankingLoss, SessionGRU, _extension
        from gru4rec_ext.reference import session_gru_reference
        assert not _extension.available()
        gru = SessionGRU(10, 8)
        ids, reset = torch.randint(0, 10, (3, 4)), torch.rand(3, 4) < 0.3
        out, h_n = gru(ids, reset)
        ref, _ = session_gru_reference(ids, reset, torch.zeros(4, 8), *gru.layer_parameters(0))
        assert torch.equal(out, ref)
        w = torch.randn(10, 8, requires_grad=True)
        loss = SampledRankingLoss("top1")(out[-1], w, torch.zeros(10), torch.arange(4),
                                          torch.arange(4, 10))
        loss.backward()
        assert gru.weight_hh_l0.grad is not None and w.grad is not None
        print("reference ok")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "reference ok" in run.stdout


@pytest.mark.parametrize("path", ["kernels", "reference"])
@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_sparse_grad_equals_the_dense_gradient(path, loss):
    """SampledRankingLoss(sparse_grad=True): the weight and bias gradients are sparse COO tensors,
    one uncoalesced entry per candidate, equal to the dense gradients once summed (repeated
    candidates, an invalid row), on the compiled op and on the reference; hidden's gradient is the
    dense one. torch.optim.SGD takes them and makes the dense update."""
    from gru4rec_ext.reference_loss import sampled_ranking_loss_reference
    import gru4rec_ext._extension as ext
    if path == "kernels" and not ext.available():
        pytest.skip("gru4rec_ext._C not built")
    torch.manual_seed(7)
    B, K, H, N = 5, 7, 4, 30
    hidden = torch.randn(B, H, dtype=torch.float64)
    weight = torch.randn(N, H, dtype=torch.float64) * 0.3
    bias = torch.randn(N, dtype=torch.float64) * 0.1
    targets = torch.tensor([1, 4, 4, 9, 0])
    samples = torch.tensor([4, 2, 2, 17, 29, 0, 5])
    log_q = torch.randn(B + K, dtype=torch.float64) - 3.0 if loss == "cross-entropy" else None
    valid = torch.tensor([True, True, False, True, True])
    grads = {}
    for sparse in (False, True):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        kw = dict(loss=loss, bpreg=0.5 if loss == "bpr-max" else 0.0, logq=1.0 if loss == "cross-entropy" else 0.0,
                  log_q=log_q, valid=valid, sparse_grad=sparse)
        if path == "kernels":
            out = SampledRankingLoss(loss, bpreg=kw["bpreg"], logq=kw["logq"], sparse_grad=sparse)(
                h, w, b, targets, samples, log_q, valid)
        else:
            out = sampled_ranking_loss_reference(h, w, b, targets, samples, **kw)
        out.backward()
        grads[sparse] = (h.grad, w.grad, b.grad)
    dense, sparse = grads[False], grads[True]
    assert not dense[1].is_sparse and sparse[1].is_sparse and sparse[2].is_sparse
    assert sparse[1].shape == (N, H) and sparse[2].shape == (N,)
    assert sparse[1]._nnz() == B + K  # one entry per candidate, duplicates not coalesced
    assert torch.allclose(sparse[0], dense[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(sparse[1].to_dense(), dense[1], rtol=1e-12, atol=1e-14)
    assert torch.allclose(sparse[2].to_dense(), dense[2], rtol=1e-12, atol=1e-14)
    p_sparse, p_dense = nn.Parameter(weight.clone()), nn.Parameter(weight.clone())
    p_sparse.grad, p_dense.grad = sparse[1], dense[1]
    for p in (p_sparse, p_dense):
        torch.optim.SGD([p], lr=0.1).step()
    assert torch.allclose(p_sparse, p_dense, rtol=1e-12, atol=1e-14)


@needs_extension()
def test_sparse_grad_module_repr_and_double_backward():
    m = SampledRankingLoss("top1", sparse_grad=True)
    assert "sparse_grad=True" in repr(m) and "sparse_grad" not in repr(SampledRankingLoss("top1"))
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    out = m(h, w, torch.zeros(10, dtype=torch.float64), torch.tensor([0, 1, 2]), torch.tensor([5, 6]))
    (g,) = torch.autograd.grad(out, h, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@needs_extension()
def test_torch_compile_fullgraph_before_any_eager_call():
    """In a fresh process, torch.compile(fullgraph=True) of a model using both modules traces
    before any eager call (the kernel-availability check is a constant for the compiler), with
    dense and with sparse table gradients, and gives eager's loss and gradients."""
    code = textwrap.dedent("""
        import torch
        from gru4rec_ext import SampledRankingLoss, SessionGRU
        for sparse in (False, True):
            torch.manual_seed(0)
            w = torch.nn.Parameter(torch.randn(50, 8)); b = torch.nn.Parameter(torch.zeros(50))
            loss_fn = SampledRankingLoss("bpr-max", bpreg=0.5, sparse_grad=sparse)
            gru = SessionGRU(8, 8)
            def f(x, r, t, s):
                out, _ = gru(x, r)
                return loss_fn(out[-1], w, b, t, s)
            x, r = torch.randn(2, 4, 8), torch.tensor([[False] * 4, [True, False, False, True]])
            t, s = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 1])
            compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x, r, t, s)
            compiled.backward()
            g_c = (w.grad.to_dense().clone(), gru.weight_hh_l0.grad.clone())
            w.grad = None; gru.weight_hh_l0.grad = None
            eager = f(x, r, t, s)
            eager.backward()
            assert torch.allclose(compiled, eager), (compiled, eager)
            assert w.grad.is_sparse == sparse
            assert torch.allclose(g_c[0], w.grad.to_dense()) and torch.allclose(g_c[1], gru.weight_hh_l0.grad)
        print("compiled first ok")
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "compiled first ok" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
