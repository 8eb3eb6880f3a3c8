"""The training step (gru4rec_ext/train_step.py, csrc/train_step.cpp): fixed shapes at the epoch tail
(issue 9)."""

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


def _optimizer(model, cls):
    sparse = {"Wy": model.Wy, "By": model.By, **({"E": model.E} if model.E is not None else {})}
    return cls(model.gru_parameters(), sparse, 0.1, 0.2, sparse_kernel=None if model.backend == "kernels" else False)


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
