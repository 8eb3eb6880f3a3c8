"""The fused sampled ranking loss (SPEC section 4): `gru4rec::sampled_loss_forward/backward`.

Two entry points:

* `sampled_ranking_loss(...)` -> 0-dim loss, differentiable w.r.t. hidden, weight and bias: the
  op `torch.ops.gru4rec.sampled_ranking_loss`, whose autograd is a C++ autograd Function
  (csrc/sampled_loss_autograd.cpp); the weight and bias gradients are dense, summed from the row
  gradients (index_put accumulate on the CPU, index_add on CUDA).
* the row-sparse pair of the trainer, with no autograd involved:
  `state = sampled_loss_forward(...)`, `state.loss`, then
  `grad_hidden, candidates, grad_weight_rows, grad_bias_rows = sampled_loss_backward(state)`;
  row j of grad_weight_rows / grad_bias_rows belongs to item candidates[j]. By default the
  candidates are the targets then the samples (duplicates not summed); with
  `unique_candidates=True` (CPU kernel) they are the distinct items, each gathered, scored and
  given its summed gradient once (the op's `columns` argument maps the loss columns to them).

Without a compiled kernel for the device (see `gru4rec_ext._extension.use_kernel`, which logs
the fallback once) both run the pure-PyTorch reference of `gru4rec_ext.reference_loss`. This
module registers the fake kernels of the three ops, and keeps a Python autograd formula on
`sampled_loss_forward` for callers of that op.
"""
from __future__ import annotations

import torch

from .. import _extension
from .unique_ids import unique_ids
from ..reference_loss import (_check_names_and_log_q, ranking_loss_from_rows,
                              sampled_ranking_loss_reference)

__all__ = ["sampled_ranking_loss", "sampled_loss_forward", "sampled_loss_backward",
           "SampledLossState"]

_OP = "sampled_loss_forward"
# torch.ops.gru4rec.sampled_ranking_loss.default (set when the extension is built).
_RANKING_LOSS = torch.ops.gru4rec.sampled_ranking_loss.default if _extension.available() else None
_kernel_ok: dict = {}  # device type -> whether the compiled kernel runs there (asked once)


@torch.compiler.assume_constant_result  # torch.compile: asked while tracing, a constant in the graph
def _use_kernel(device: torch.device) -> bool:
    ok = _kernel_ok.get(device.type)
    if ok is None:
        ok = _kernel_ok[device.type] = _extension.use_kernel(_OP, device)
    return ok


def _candidates(targets, samples):
    for name, t in (("targets", targets), ("samples", samples)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int64 tensor of item ids")
    return torch.cat((targets, samples))


def sampled_ranking_loss(hidden, weight, bias, targets, samples, *, loss="cross-entropy",
                         activation="linear", elu_alpha=1.0, bpreg=0.0, logq=0.0, log_q=None,
                         valid=None, mask_accidental_hits=False, sparse_grad=False):
    """The batch's sampled ranking loss: sum over valid rows of the row losses, divided by B.

    hidden [B,H], weight [N,H], bias [N] (scores r_bj = act(h_b . W[c_j] + b[c_j])), targets int64
    [B], samples int64 [K] (candidates = targets then samples). loss: "bpr", "top1", "bpr-max",
    "top1-max", "cross-entropy" (or "xe"); activation: "linear", "tanh", "elu", "elu-<alpha>".
    bpreg: BPR-max's score regularisation; logq > 0: cross-entropy subtracts logq * log_q [B+K]
    from every score; valid bool [B] (an invalid row has no loss, and its target column is no
    row's negative); mask_accidental_hits: a column holding row b's target id is not a negative
    of row b. Differentiable w.r.t. hidden, weight and bias, once: the gradients are not
    differentiable again (double backward raises). The weight and bias gradients are dense, or with
    sparse_grad=True sparse COO tensors holding the B+K candidates' rows (uncoalesced, as
    nn.Embedding(sparse=True) gives): no [N,H] buffer to fill, for optimizers that take sparse
    gradients (torch.optim.SGD, SparseAdam, Adagrad).
    """
    code, act, alpha = _check_names_and_log_q(loss, activation, elu_alpha, logq, log_q)
    if not _use_kernel(hidden.device):
        return sampled_ranking_loss_reference(
            hidden, weight, bias, targets, samples, loss=loss, activation=activation,
            elu_alpha=elu_alpha, bpreg=bpreg, logq=logq, log_q=log_q, valid=valid,
            mask_accidental_hits=mask_accidental_hits, sparse_grad=sparse_grad)
    # The overload itself, every argument positional: no schema defaults filled in Python.
    return _RANKING_LOSS(hidden, weight, bias, targets, samples, log_q, valid, code, act, alpha,
                         float(bpreg), float(logq), bool(mask_accidental_hits), bool(sparse_grad))


class SampledLossState:
    """What `sampled_loss_backward` needs from a `sampled_loss_forward` call; `.loss` is 0-dim."""

    __slots__ = ("loss", "candidates", "_args", "_workspace", "_columns", "_ref")

    def __init__(self, loss, candidates, args, workspace, ref=None, columns=None):
        self.loss = loss
        self.candidates = candidates
        self._args = args            # the forward op's arguments (kernel path)
        self._workspace = workspace  # the forward op's workspace (kernel path)
        self._columns = columns      # the forward op's columns (kernel path, unique candidates)
        self._ref = ref              # reference path: (loss with graph, (hidden, weight_rows, bias_rows) leaves)


_ones: dict = {}


def _one(like):
    key = (like.device, like.dtype)
    one = _ones.get(key)
    if one is None:
        one = _ones[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return one


def sampled_loss_forward(hidden, weight, bias, targets, samples, *, loss="cross-entropy",
                         activation="linear", elu_alpha=1.0, bpreg=0.0, logq=0.0, log_q=None,
                         valid=None, mask_accidental_hits=False,
                         unique_candidates=False) -> SampledLossState:
    """Forward of the row-sparse pair (no autograd): same arguments as `sampled_ranking_loss`.

    unique_candidates: on the CPU kernel path, gather and score each distinct candidate item once
    (the loss is the same; the backward then returns one summed gradient row per distinct item).
    Elsewhere it is ignored. Returns a `SampledLossState` whose `.loss` is the 0-dim batch loss;
    pass it to `sampled_loss_backward`. No host synchronisation on CUDA.
    """
    code, act, alpha = _check_names_and_log_q(loss, activation, elu_alpha, logq, log_q)
    candidates = _candidates(targets, samples)
    opts = (code, act, alpha, float(bpreg), float(logq), bool(mask_accidental_hits))
    if _use_kernel(hidden.device):
        columns = None
        if unique_candidates and hidden.device.type == "cpu":
            candidates, columns = unique_ids(candidates, weight.shape[0])
        out, workspace = torch.ops.gru4rec.sampled_loss_forward.default(
            hidden, weight, bias, candidates, log_q, valid, *opts, columns)
        return SampledLossState(out, candidates, (hidden, weight, bias, candidates, log_q, valid)
                                + opts, workspace, columns=columns)
    # Reference path: autograd through plain PyTorch on leaf copies of the gathered rows.
    if candidates.numel() and (candidates.min() < 0 or candidates.max() >= weight.shape[0]):
        raise ValueError(f"targets/samples hold an item id out of range [0, {weight.shape[0]})")
    with torch.enable_grad():
        rows = (hidden.detach().requires_grad_(), weight[candidates].detach().requires_grad_(),
                bias[candidates].detach().requires_grad_())
        out = ranking_loss_from_rows(*rows, candidates, loss_code_=code, activation_code_=act,
                                     elu_alpha=alpha, bpreg=bpreg, logq=logq, log_q=log_q,
                                     valid=valid, mask_accidental_hits=mask_accidental_hits)
    return SampledLossState(out.detach(), candidates, None, None, (out, rows))


def sampled_loss_backward(state: SampledLossState, grad_loss=None):
    """Backward of the row-sparse pair: (grad_hidden [B,H], candidates [U], grad_weight_rows
    [U,H], grad_bias_rows [U]); U = C = B + K unless the forward took unique_candidates=True.
    grad_loss (0-dim tensor or number) defaults to 1."""
    if not isinstance(state, SampledLossState):
        raise TypeError("state must be the SampledLossState that sampled_loss_forward returned")
    like = state.loss
    if grad_loss is None:
        grad_loss = _one(like)
    elif not isinstance(grad_loss, torch.Tensor):
        grad_loss = torch.tensor(float(grad_loss), dtype=like.dtype, device=like.device)
    if state._ref is not None:  # reference path
        out, rows = state._ref
        grads = torch.autograd.grad(out, rows, grad_outputs=grad_loss)
        return grads[0], state.candidates, grads[1], grads[2]
    a = state._args
    grad_hidden, grad_weight_rows, grad_bias_rows = torch.ops.gru4rec.sampled_loss_backward.default(
        grad_loss, *a, state._workspace, state._columns)
    return grad_hidden, state.candidates, grad_weight_rows, grad_bias_rows


# ---- torch.library registrations (autograd of the forward op, fake kernels of both ops) ----

# The dtypes the kernels are compiled for (half and float8 are refused, naming hidden).
KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _check_dtype(hidden):
    if hidden.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"sampled_loss: hidden has dtype {hidden.dtype}; the kernels support "
                           "float32, float64 and bfloat16 (not half or float8): convert the model")


def _fake_forward(hidden, weight, bias, candidates, log_q, valid, loss, activation, elu_alpha,
                  bpreg, logq, mask_hits, columns=None):
    _check_dtype(hidden)
    B, H = hidden.shape
    C = candidates.shape[0]  # the gathered rows (U when columns are given)
    if weight.shape[1] != H:
        raise RuntimeError(f"sampled_loss: weight has H={weight.shape[1]} columns but hidden has H={H}")
    for name, t in (("weight", weight), ("bias", bias), ("candidates", candidates)):
        if t.device != hidden.device:
            raise RuntimeError(f"sampled_loss: {name} is on {t.device} but hidden is on {hidden.device}")
    return hidden.new_empty(()), hidden.new_empty((B * C + C * H,))


def _fake_backward(grad_loss, hidden, weight, bias, candidates, log_q, valid, loss, activation,
                   elu_alpha, bpreg, logq, mask_hits, workspace, columns=None):
    _check_dtype(hidden)
    B, H = hidden.shape
    C = candidates.shape[0]
    return hidden.new_empty((B, H)), hidden.new_empty((C, H)), hidden.new_empty((C,))


def _fake_ranking_loss(hidden, weight, bias, targets, samples, log_q, valid, loss, activation,
                       elu_alpha, bpreg, logq, mask_hits, sparse_grad=False):
    for name, t in (("targets", targets), ("samples", samples)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"sampled_ranking_loss: {name} must be a 1-D int64 tensor of item ids")
    candidates = targets.new_empty((targets.shape[0] + samples.shape[0],))
    return _fake_forward(hidden, weight, bias, candidates, log_q, valid, loss, activation,
                         elu_alpha, bpreg, logq, mask_hits)[0]


# Autograd of sampled_loss_forward for its direct callers (sampled_ranking_loss has its own, in C++).
def _setup_context(ctx, inputs, output):
    hidden, weight, bias, candidates, log_q, valid = inputs[:6]
    ctx.opts = tuple(inputs[6:12])
    ctx.save_for_backward(hidden, weight, bias, candidates, log_q, valid, output[1],
                          inputs[12] if len(inputs) > 12 else None)
    ctx.weight_shape = weight.shape
    ctx.bias_shape = bias.shape
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_workspace):
    hidden, weight, bias, candidates, log_q, valid, workspace, columns = ctx.saved_tensors
    grad_hidden, grad_w_rows, grad_b_rows = torch.ops.gru4rec.sampled_loss_backward.default(
        grad_loss, hidden, weight, bias, candidates, log_q, valid, *ctx.opts, workspace, columns)
    need = ctx.needs_input_grad
    grad_weight = _dense_from_rows(grad_w_rows, candidates, ctx.weight_shape) if need[1] else None
    grad_bias = _dense_from_rows(grad_b_rows, candidates, ctx.bias_shape) if need[2] else None
    return (grad_hidden if need[0] else None, grad_weight, grad_bias) + (None,) * (len(need) - 3)


def _dense_from_rows(rows, candidates, shape):
    """Dense gradient of a table from its row gradients (duplicate candidates summed)."""
    dense = rows.new_zeros(shape)
    if rows.device.type == "cpu":  # a TensorIterator kernel; CPU index_add_ loops over the rows
        return dense.index_put_((candidates,), rows, accumulate=True)
    return dense.index_add_(0, candidates, rows)  # atomics on CUDA


def _register():
    if not _extension.available() or not hasattr(torch.ops.gru4rec, "sampled_loss_forward"):
        return
    torch.library.register_fake("gru4rec::sampled_loss_forward", _fake_forward)
    torch.library.register_fake("gru4rec::sampled_loss_backward", _fake_backward)
    torch.library.register_fake("gru4rec::sampled_ranking_loss", _fake_ranking_loss)
    torch.library.register_autograd("gru4rec::sampled_loss_forward", _backward,
                                    setup_context=_setup_context)


_register()
