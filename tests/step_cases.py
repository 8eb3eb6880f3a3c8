"""Arguments of one `train_step_` call on CPU tensors, for the tests of the CUDA mode's step
(tests/test_train_graph.py, tests/test_emulated_step.py)."""
import torch

from gru4rec_ext.model import GRU4Rec

MODES = {"shared": dict(), "embedding": dict(constrained_embedding=False, embedding=8),
         "onehot": dict(constrained_embedding=False)}
INPUT_MODES = {"shared": 0, "embedding": 1, "onehot": 2}


def step_case(mode, valid, seed=0, B=6, K=7, N=30, H=8, momentum=0.3, loss=4, logq=1.0):
    """The arguments of gru4rec::train_step_ (a list, in schema order) for a small model in input
    `mode`: duplicates among the candidates, accidental hits, in shared mode an input row that is
    also a candidate, random optimizer state, dropout on the hidden layer; `valid` [B] or None."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GRU4Rec(N, [H], backend="kernels", **MODES[mode])
    inputs = torch.randint(0, N, (B,), generator=g)
    targets = torch.randint(0, N, (B,), generator=g)
    samples = torch.randint(0, N, (K,), generator=g)
    samples[:3] = targets[:3]  # accidental hits: an item scored in several columns
    samples[3] = samples[4]
    if mode == "shared":
        inputs[0] = targets[1]  # a row both an input row and a candidate
    reset = torch.rand(B, generator=g) < 0.3
    tables = [model.Wy.detach(), model.By.detach()] + ([model.E.detach()] if model.E is not None else [])
    gru = list(p.detach() for p in model.gru_parameters().values())
    state = lambda ts: [torch.rand(t.shape, generator=g, dtype=t.dtype) * 0.1 for t in ts]  # noqa: E731
    log_count, log_weight = torch.randn(N, generator=g), torch.randn(N, generator=g)
    return [inputs, targets, reset, valid, samples, log_count, log_weight, torch.randn(1, B, H, generator=g),
            tables, state(tables), state(tables), gru, state(gru), state(gru), list(model._variant_codes),
            INPUT_MODES[mode], 0.0, 0.2, loss, 0, 1.0, 0.5, logq, False, 0.1, momentum, 1e-6]


def clone_args(args):
    """A copy of step_case's arguments (tensors and tensor lists cloned)."""
    return [([t.clone() for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
             else a.clone() if isinstance(a, torch.Tensor) else a) for a in args]


def run_step(args, ops=None, **kw):
    """One step of `ops.train_step_` (default torch.ops.gru4rec) on a copy of `args`, with the same
    dropout masks every call: (loss, hidden, [tables, table_accs, table_moms, gru_params, gru_accs,
    gru_moms] after the step)."""
    ops = ops if ops is not None else torch.ops.gru4rec
    args = clone_args(args)
    torch.manual_seed(5)  # the same dropout masks
    loss, hidden = ops.train_step_(*args, **kw)
    return loss, hidden, args[8:14]
