"""The training step (gru4rec_ext/train_step.py, csrc/train_step.cpp): fixed shapes at the epoch tail,
id validation where the schedule is built, the one-hot input's column-sparse weight_ih update
(issue 9)."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gru4rec_ext._extension as ext
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.train import Trainer
from gru4rec_ext.train_step import OutputLoss, compute_step

KERNELS = ext.has_kernel("session_gru_forward", "CPU") and ext.has_kernel("sampled_loss_forward", "CPU")
FUSED = ext.has_kernel("train_step_", "CPU")
BACKENDS = [pytest.param("kernels", marks=pytest.mark.skipif(not KERNELS, reason="kernels not built")), "reference"]
MODES = {"shared": dict(), "embedding": dict(constrained_embedding=False, embedding=8),
         "onehot": dict(constrained_embedding=False)}
# Ops with a data-dependent output shape, and ops that read a tensor's value on the host (a device
# sync on CUDA).
DATA_DEPENDENT = {"aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim",
                  "aten::unique_consecutive"}
HOST_READS = {"aten::_local_scalar_dense", "aten::item"}


class ShapeLog(TorchDispatchMode):
    """Records (op, output shapes) of every op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.log = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        self.log.append((func.name(), tuple(tuple(t.shape) for t in flat if isinstance(t, torch.Tensor))))
        return out


def _step_inputs(n_items=50, b=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, n_items, (b,), generator=g), torch.randint(0, n_items, (b,), generator=g),
            torch.rand(b, generator=g) < 0.3, torch.randint(0, n_items, (k,), generator=g))


VALID_MASKS = [[True] * 6, [True, False, True, True, False, False], [False, False, False, False, False, True]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_tail_step_has_no_data_dependent_shape(backend, mode):
    """The Python step (forward, loss, backward and the updates) dispatches the same ops with the
    same output shapes whatever the valid mask, and nothing that syncs with the host."""
    from gru4rec_ext.optim import AdagradM
    inputs, targets, reset, samples = _step_inputs()
    logs = []
    for mask in VALID_MASKS[:1] + VALID_MASKS:  # the first run warms the ops' caches up (a ones / zeros)
        torch.manual_seed(0)
        model = GRU4Rec(50, [16], backend=backend, dropout_p_hidden=0.2, **MODES[mode])
        trainer_opt = _optimizer(model, AdagradM)
        out = OutputLoss(model, loss="cross-entropy", bpreg=0.0, logq=0.0, mask_accidental_hits=False)
        with ShapeLog() as rec:
            _, _, dense, sparse = compute_step(model, out, inputs, targets, reset, torch.tensor(mask), samples,
                                               model.init_hidden(6), None)
            trainer_opt.step_dense(list(dense.values()))
            for name, (idx, rows) in sparse.items():
                trainer_opt.step_sparse(name, idx, rows)
        logs.append(rec.log)
        assert not {op for op, _ in rec.log} & (DATA_DEPENDENT | HOST_READS)
    assert logs[1] == logs[2] == logs[3]


def _optimizer(model, cls, momentum=0.2, columns=True):
    """The trainer's optimizer: a one-hot model's weight_ih_l0 column-sparse (unless not columns)."""
    dense = model.gru_parameters()
    sparse = {"Wy": model.Wy, "By": model.By, **({"E": model.E} if model.E is not None else {})}
    names = ["weight_ih_l0"] if columns and model.input_mode == "onehot" else []
    sparse.update({n: dense.pop(n) for n in names})
    return cls(dense, sparse, 0.1, momentum, sparse_kernel=None if model.backend == "kernels" else False,
               sparse_columns=names)


@pytest.mark.skipif(not FUSED, reason="train_step_ kernel not built")
@pytest.mark.parametrize("mode", list(MODES))
def test_fused_tail_step_has_no_data_dependent_shape(mode):
    """Inside gru4rec::train_step_ (seen through the profiler's record of every ATen op and its
    input shapes, nested ones included) a tail step runs the same ops on the same shapes as a step
    with all rows valid, and no op with a data-dependent shape. (Host reads are not checked here:
    the op is CPU-only, where the loss backward reads grad_loss on the host at no cost.)"""
    inputs, targets, reset, samples = _step_inputs(seed=1)
    runs = []
    for mask in VALID_MASKS[:1] + VALID_MASKS:  # the first run warms up
        torch.manual_seed(0)
        model = GRU4Rec(50, [16], backend="kernels", dropout_p_hidden=0.2, **MODES[mode])
        trainer = Trainer(model, _tiny_data(), n_epochs=1, batch_size=6, n_sample=5, momentum=0.2, progress=False)
        step = trainer.make_step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            step.run(inputs, targets, reset, torch.tensor(mask), samples, model.init_hidden(6))
        events = [(e.name, tuple(map(tuple, e.input_shapes))) for e in prof.events() if e.name.startswith("aten::")]
        assert not {name for name, _ in events} & DATA_DEPENDENT
        runs.append(events)
    assert runs[1] == runs[2] == runs[3]


_TINY = {}


def _tiny_data():
    """A SessionData over 50 items (every item seen), enough to build a Trainer."""
    if "data" not in _TINY:
        import pandas as pd
        from gru4rec_ext.data import ItemMap, SessionData
        items = list(range(50)) * 2
        df = pd.DataFrame({"SessionId": [i // 4 for i in range(100)], "ItemId": items,
                           "Time": [float(i) for i in range(100)]})
        imap = ItemMap.fit(df["ItemId"])
        _TINY["data"] = SessionData.from_events(df, imap, name="tiny")
    return _TINY["data"]



def test_schedule_names_an_out_of_range_item_id():
    """Item ids are validated once where the epoch schedule is built (issue 9, fix 3): a clear
    error naming the data, the bad id, its event and session, before any step runs."""
    from gru4rec_ext.batching import build_schedule
    data = _tiny_data()
    build_schedule(data, 4, n_items=50)
    torch.manual_seed(0)
    trainer = Trainer(GRU4Rec(50, [8]), data, n_epochs=1, batch_size=4, n_sample=3, progress=False)
    saved = data.items.copy()
    data.items[7] = 53  # bypasses SessionData's own check, as an edited data object would
    try:
        with pytest.raises(ValueError, match=r"tiny: item id 53 \(event 7, session 1\) is out of range \[0, 50\)"):
            build_schedule(data, 4, n_items=50)
        with pytest.raises(ValueError, match="tiny: item id 53"):
            trainer.fit()
        data.items[7] = -2
        with pytest.raises(ValueError, match="tiny: item id -2"):
            build_schedule(data, 4, n_items=50)
    finally:
        data.items[:] = saved


# ----- one-hot input: weight_ih updated on the columns of the step's items (issue 9, fix 9) -----

def _onehot_model(backend):
    torch.manual_seed(0)
    return GRU4Rec(50, [16], constrained_embedding=False, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_onehot_weight_ih_sparse_update_equals_dense(backend, momentum):
    """The column-sparse update of a one-hot model's weight_ih gives the dense update's weights up
    to float rounding: over several steps, a tail step included, with momentum 0 (an untouched
    column does not move under the dense update either), and for the first step with momentum.
    Later, with momentum, the untouched columns keep their values (as the item tables' rows do,
    and as the authors update them) where the dense update moves them by their velocity."""
    from gru4rec_ext.optim import AdagradM
    sparse_model, dense_model = _onehot_model(backend), _onehot_model(backend)
    start = sparse_model.weight_ih_l0.detach().clone()
    losses = [OutputLoss(m, loss="bpr-max", bpreg=0.5, logq=0.0, mask_accidental_hits=False)
              for m in (sparse_model, dense_model)]
    opts = [_optimizer(sparse_model, AdagradM, momentum), _optimizer(dense_model, AdagradM, momentum, columns=False)]
    hidden = [sparse_model.init_hidden(6), dense_model.init_hidden(6)]
    touched = torch.zeros(50, dtype=torch.bool)
    for step in range(4):
        inputs, targets, reset, samples = _step_inputs(seed=10 + step)
        valid = torch.tensor(VALID_MASKS[1]) if step == 3 else None
        before = [m.weight_ih_l0.detach().clone() for m in (sparse_model, dense_model)]
        for k, (model, out, opt) in enumerate(zip((sparse_model, dense_model), losses, opts)):
            _, hidden[k], dense, sparse = compute_step(model, out, inputs, targets, reset, valid, samples, hidden[k])
            idx, rows = sparse["weight_ih_l0"]
            assert "weight_ih_l0" not in dense and idx.shape == (6,) and rows.shape == (6, 48)
            if k == 1:  # the dense baseline: the same gradient, densified, updated densely
                del sparse["weight_ih_l0"]
                live = idx >= 0
                dense["weight_ih_l0"] = torch.zeros(48, 50).index_add_(1, idx[live], rows[live].t())
                dense = {n: dense[n] for n in model.gru_parameters()}
            opt.step_dense(list(dense.values()))
            for name, (i, r) in sparse.items():
                opt.step_sparse(name, i, r)
        now = torch.zeros(50, dtype=torch.bool)
        now[inputs[valid] if valid is not None else inputs] = True
        w_sparse, w_dense = sparse_model.weight_ih_l0.detach(), dense_model.weight_ih_l0.detach()
        if step == 0 or momentum == 0:  # (with momentum the rules part once a column has a velocity)
            assert torch.allclose(w_sparse, w_dense, rtol=1e-5, atol=1e-7), step
        resting = touched & ~now  # touched before, not in this step
        assert resting.any() or step == 0
        assert torch.equal(w_sparse[:, ~now], before[0][:, ~now])
        if momentum > 0 and step > 0:
            assert (w_dense[:, resting] != before[1][:, resting]).any(0).all()  # moved by their velocity
        touched |= now
    assert not touched.all()
    for w in (w_sparse, w_dense):
        assert torch.equal(w[:, ~touched], start[:, ~touched])
    if momentum == 0:
        for name in ("Wy", "By", "weight_hh_l0", "bias_ih_l0"):
            assert torch.allclose(getattr(sparse_model, name), getattr(dense_model, name), rtol=1e-4, atol=1e-6), name


@pytest.mark.skipif(not FUSED, reason="train_step_ kernel not built")
def test_onehot_fused_step_updates_only_input_columns():
    """gru4rec::train_step_ on a one-hot model: weight_ih and its state change on the input items'
    columns only (a tail step: the invalid rows' columns neither), and equal the Python sequence."""
    inputs, targets, reset, samples = _step_inputs(seed=3)
    valid = torch.tensor(VALID_MASKS[1])
    inputs[~valid] = 49  # an item no valid row feeds
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GRU4Rec(50, [16], constrained_embedding=False, backend="kernels")
        trainer = Trainer(model, _tiny_data(), n_epochs=1, batch_size=6, n_sample=5, momentum=0.2, progress=False)
        trainer.optimizer.mom["weight_ih_l0"].fill_(0.01)  # momentum would move every column of a dense update
        trainer.fused_step = fused
        before = model.weight_ih_l0.detach().clone()
        trainer.make_step().run(inputs, targets, reset, valid, samples, model.init_hidden(6))
        changed = (model.weight_ih_l0.detach() != before).any(0)
        assert set(changed.nonzero().flatten().tolist()) == set(inputs[valid].tolist())
        results.append((model.weight_ih_l0.detach().clone(), trainer.optimizer.acc["weight_ih_l0"].clone(),
                        trainer.optimizer.mom["weight_ih_l0"].clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.skipif(not KERNELS, reason="kernels not built")
def test_session_gru_backward_ids_gives_row_sparse_weight_ih_grad():
    """For id input the op returns grad_weight_ih as [T*B, 3H] rows (row t*B+b for column
    input[t,b], duplicates not summed); summed into their columns they are the reference's dense
    gradient, which the autograd wrapper returns."""
    from gru4rec_ext.ops.session_gru import session_gru
    from gru4rec_ext.reference import session_gru_reference
    torch.manual_seed(1)
    T, B, H, N = 3, 4, 5, 6
    ids = torch.randint(0, N, (T, B))
    ids[1, 2] = ids[0, 0]  # a repeated id
    reset = torch.rand(T, B) < 0.3
    f64 = dict(dtype=torch.float64)
    h0, w_ih, w_hh = torch.randn(B, H, **f64), torch.randn(3 * H, N, **f64), torch.randn(3 * H, H, **f64)
    b_ih, b_hh = torch.randn(3 * H, **f64), torch.randn(3 * H, **f64)
    for variant in (0, 1):
        out, h_n, ws = torch.ops.gru4rec.session_gru_forward(ids, reset, h0, w_ih, w_hh, b_ih, b_hh, variant)
        go = torch.randn_like(out)
        grads = torch.ops.gru4rec.session_gru_backward(go, torch.zeros_like(h_n), ids, reset, h0, w_ih, w_hh, b_ih,
                                                       b_hh, out, ws, variant, False, False)
        assert grads[2].shape == (T * B, 3 * H)
        w = w_ih.clone().requires_grad_()
        (ref_grad,) = torch.autograd.grad(session_gru_reference(ids, reset, h0, w, w_hh, b_ih, b_hh, variant)[0], w,
                                          go)
        dense = torch.zeros(3 * H, N, **f64).index_add_(1, ids.reshape(-1), grads[2].t())
        assert torch.allclose(dense, ref_grad, atol=1e-12)
        w = w_ih.clone().requires_grad_()
        (grad,) = torch.autograd.grad(session_gru(ids, reset, h0, w, w_hh, b_ih, b_hh, variant=variant)[0], w, go)
        assert grad.shape == (3 * H, N) and torch.allclose(grad, ref_grad, atol=1e-12)


# ----- a bf16 model trains on the CPU (issue 9: "what it must show") -----

@pytest.mark.parametrize("backend", ["reference", "kernels"])
def test_bf16_model_trains_with_float32_optimizer_state(backend):
    """A bfloat16 GRU4Rec (the pure-PyTorch ops, or the bf16 kernels: the fused step on the CPU)
    trains with finite, falling loss; its optimizer state is float32; evaluation ranks float32
    scores of it, above the untrained model."""
    from gru4rec_ext.evaluate import evaluate
    from train_helpers import rsc15_slice
    train_data, test_data, item_map = rsc15_slice(300, 100)
    torch.manual_seed(0)
    model = GRU4Rec(item_map.n_items, [32], dropout_p_hidden=0.2, backend=backend).to(torch.bfloat16)
    before = evaluate(model, test_data, progress=False)["standard"]["recall@20"]
    trainer = Trainer(model, train_data, n_epochs=2, batch_size=32, n_sample=64, logq=1.0, momentum=0.1,
                      learning_rate=0.2, progress=False)
    losses = [e["loss"] for e in trainer.fit()["epochs"]]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0], losses
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {t.dtype for t in [*trainer.optimizer.acc.values(), *trainer.optimizer.mom.values()]} == {torch.float32}
    after = evaluate(model, test_data, progress=False, tie_modes=("standard", "conservative"))
    assert after["standard"]["recall@20"] > before + 0.05, (before, after["standard"])
    # Scored in float32: bf16 scores would tie (steps of 2^-8 relative) and split the tie modes.
    assert after["standard"] == after["conservative"]
