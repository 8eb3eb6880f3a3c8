"""Adagrad with momentum (SPEC section 5), dense for the GRU weights and row-sparse for item tables.

    acc += g^2;  v = mu * v - lr * g / sqrt(acc + eps);  p += v
    (momentum 0: p -= lr * g / sqrt(acc + eps))

The row-sparse update takes row indices with duplicates and one gradient row per index; rows
touched several times have their gradients summed first and are updated once (acc and v too);
untouched rows are left alone, and so are the entries whose index is negative (the trainer marks
rows that must not update with -1, which keeps every shape fixed). All state is preallocated and
every update is in place and free of host synchronisation (no `unique`, no data-dependent shapes).

Precision: float32 and float64 parameters keep acc and v in their own dtype; bfloat16 and float16
parameters keep them in float32 (`state_dtype`), and the update runs in float32 before the new
value is rounded into the parameter.
"""
from __future__ import annotations

import torch

from . import _extension

EPS = 1e-6


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a parameter's Adagrad state (acc, v): float32 for bfloat16 and float16
    parameters, else the parameter's own dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def dense_adagrad_update_(params, grads, accs, moms, lr: float, momentum: float, eps: float = EPS,
                          use_kernel: bool | None = None):
    """In-place dense update of lists of tensors. `moms` is ignored when momentum 0.

    grads in the params' dtypes; accs and moms in `state_dtype` of them. On the CPU the compiled
    `gru4rec::dense_adagrad_` (one fused pass per tensor) when built (use_kernel None: when
    available); otherwise, and on CUDA, torch's foreach ops (in the state dtype).
    """
    if use_kernel is None:
        use_kernel = params[0].device.type == "cpu" and _extension.has_kernel("dense_adagrad_", "CPU")
    if use_kernel:
        torch.ops.gru4rec.dense_adagrad_(list(params), list(accs), list(moms) if momentum > 0 else [],
                                         [g.contiguous() for g in grads], float(lr), float(momentum), float(eps))
        return
    params, grads = list(params), list(grads)
    rounded = [i for i, (p, a) in enumerate(zip(params, accs)) if p.dtype != a.dtype]
    work = list(params)
    for i in rounded:  # bf16 / fp16: compute in the float32 state dtype, round into the parameter after
        work[i], grads[i] = params[i].to(accs[i].dtype), grads[i].to(accs[i].dtype)
    torch._foreach_addcmul_(accs, grads, grads)
    std = torch._foreach_add(accs, eps)
    torch._foreach_sqrt_(std)
    if momentum > 0:
        torch._foreach_mul_(moms, momentum)
        torch._foreach_addcdiv_(moms, grads, std, value=-lr)
        torch._foreach_add_(work, moms)
    else:
        torch._foreach_addcdiv_(work, grads, std, value=-lr)
    for i in rounded:
        params[i].copy_(work[i])


def sparse_adagrad_update_(param, acc, mom, scratch, indices, rows, lr: float, momentum: float,
                           eps: float = EPS, use_kernel: bool | None = None):
    """In-place row-sparse update; the compiled `gru4rec::sparse_adagrad_` when built for the device
    (use_kernel None: when available; False: the PyTorch version), else `sparse_adagrad_update_torch_`.
    Same arguments as `sparse_adagrad_update_torch_` (param may be a strided view such as
    `weight.t()`, with acc and mom viewed the same way)."""
    if use_kernel is None:
        use_kernel = _extension.has_kernel("sparse_adagrad_", "CUDA" if param.device.type == "cuda" else "CPU")
    if use_kernel:
        as2d = (lambda t: t.view(t.shape[0], -1)) if param.dim() == 1 else (lambda t: t)
        mom2d = as2d(mom) if mom is not None else acc.new_empty(0, 1)
        torch.ops.gru4rec.sparse_adagrad_(as2d(param), as2d(acc), mom2d, indices.contiguous(),
                                          as2d(rows.contiguous()), float(lr), float(momentum), float(eps))
        return
    sparse_adagrad_update_torch_(param, acc, mom, scratch, indices, rows, lr, momentum, eps)


def sparse_adagrad_update_torch_(param, acc, mom, scratch, indices, rows, lr: float, momentum: float,
                                 eps: float = EPS):
    """In-place row-sparse update of `param` [N, D] (or [N]) at rows `indices` [M] (duplicates allowed).

    rows: gradient rows [M, D] (or [M]) belonging to `indices`; entries whose index is negative
    are skipped (their rows ignored). acc, mom (None when momentum 0) and `scratch`, a zero tensor
    shaped like `param` (kept zero between calls, used to sum duplicates without a host sync), are
    in `state_dtype(param.dtype)`, which the update computes in. Every shape is fixed: skipped
    entries read and write back their row's unchanged values.
    """
    live = indices >= 0
    idx = indices.clamp_min(0)
    live_rows = live.view((-1,) + (1,) * (rows.dim() - 1))
    rows = torch.where(live_rows, rows.to(scratch.dtype), 0)
    # Which entries' rows are touched by some live entry: count the live entries of each row.
    scratch.index_add_(0, idx, live_rows.to(scratch.dtype).expand_as(rows))
    touched = scratch.index_select(0, idx) > 0
    scratch.index_fill_(0, idx, 0)
    scratch.index_add_(0, idx, rows)
    g = scratch.index_select(0, idx)  # every occurrence of a row sees the summed gradient
    scratch.index_fill_(0, idx, 0)
    a_old = acc.index_select(0, idx)
    a = a_old.addcmul(g, g)
    acc.index_copy_(0, idx, torch.where(touched, a, a_old))  # duplicates write identical values
    step = g.div_(a.add_(eps).sqrt_())
    p_old = param.index_select(0, idx).to(scratch.dtype)
    if momentum > 0:
        v_old = mom.index_select(0, idx)
        v = v_old.mul(momentum).add_(step, alpha=-lr)
        mom.index_copy_(0, idx, torch.where(touched, v, v_old))
        p_new = p_old.add(v)
    else:
        p_new = p_old.add(step, alpha=-lr)
    param.index_copy_(0, idx, torch.where(touched, p_new, p_old).to(param.dtype))


class AdagradM:
    """Adagrad with momentum over named dense and row-sparse parameters.

    Args:
        dense: {name: parameter} updated with full gradients (`step_dense`).
        sparse: {name: parameter} updated on touched rows only (`step_sparse`).
        lr, momentum, eps: SPEC section 5.
        sparse_kernel: use the compiled updates (None: when built for the device; False: the
            PyTorch versions, for the sparse and the dense update alike).
        sparse_columns: names in `sparse` whose parameter [D, N] is updated on touched COLUMNS
            (`step_sparse(name, column ids [M], rows [M, D])`): one-hot input's weight_ih [3H, N].

    The state (`acc`, `mom`: {name: tensor}) is shaped like each parameter, in `state_dtype`.
    """

    def __init__(self, dense: dict, sparse: dict, lr: float, momentum: float = 0.0, eps: float = EPS,
                 sparse_kernel: bool | None = None, sparse_columns=()):
        if lr <= 0:
            raise ValueError(f"learning_rate must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        overlap = set(dense) & set(sparse)
        if overlap:
            raise ValueError(f"parameters both dense and sparse: {sorted(overlap)}")
        columns = set(sparse_columns)
        if not columns <= set(sparse) or any(sparse[n].dim() != 2 for n in columns):
            raise ValueError(f"sparse_columns {sorted(columns)} must name 2-D parameters of sparse")
        self.lr, self.momentum, self.eps = float(lr), float(momentum), float(eps)
        self.dense = dict(dense)
        self.sparse = dict(sparse)
        self.sparse_columns = frozenset(columns)
        params = {**self.dense, **self.sparse}
        self.acc = {n: torch.zeros_like(p, dtype=state_dtype(p.dtype)) for n, p in params.items()}
        self.mom = {n: torch.zeros_like(p, dtype=state_dtype(p.dtype)) for n, p in params.items()} \
            if self.momentum > 0 else {}
        self._scratch: dict = {}  # zero buffers of the PyTorch sparse path, made on first use
        self._dense_names = list(self.dense)
        self.sparse_kernel = sparse_kernel
        self.dense_kernel = None if sparse_kernel is not False else False

    @torch.no_grad()
    def step_dense(self, grads) -> None:
        """Update every dense parameter; `grads` in the order of `dense` (list) or by name (dict)."""
        if isinstance(grads, dict):
            grads = [grads[n] for n in self._dense_names]
        if len(grads) != len(self._dense_names):
            raise ValueError(f"expected {len(self._dense_names)} dense gradients, got {len(grads)}")
        if not grads:
            return
        names = self._dense_names
        if self.dense_kernel is None:  # decided once, on the first update
            p0 = self.dense[names[0]]
            self.dense_kernel = (self.sparse_kernel is not False and p0.device.type == "cpu"
                                 and _extension.has_kernel("dense_adagrad_", "CPU"))
        params = [self.dense[n] for n in names]
        dense_adagrad_update_(params, [g.to(p.dtype) for g, p in zip(grads, params)],
                              [self.acc[n] for n in names],
                              [self.mom[n] for n in names] if self.momentum > 0 else None,
                              self.lr, self.momentum, self.eps, self.dense_kernel)

    @torch.no_grad()
    def step_sparse(self, name: str, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Update the touched rows `indices` [M] of sparse parameter `name` with gradient rows [M, ...]
        (its columns for a `sparse_columns` parameter); negative indices are skipped."""
        if name not in self.sparse:
            raise KeyError(f"{name!r} is not a sparse parameter of this optimizer")
        p, acc, mom = self.sparse[name], self.acc[name], self.mom.get(name)
        if name in self.sparse_columns:  # rows of the transposed views are the parameter's columns
            p, acc, mom = p.t(), acc.t(), mom.t() if mom is not None else None
        if self.sparse_kernel is None:  # decided once, on the first update
            self.sparse_kernel = _extension.has_kernel("sparse_adagrad_", "CUDA" if p.device.type == "cuda" else "CPU")
        if rows.shape[0] != indices.shape[0] or rows.shape[1:] != p.shape[1:]:
            raise ValueError(f"rows for {name!r} must be [{indices.shape[0]}, *{tuple(p.shape[1:])}], "
                             f"got {tuple(rows.shape)}")
        scratch = None
        if not self.sparse_kernel:
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = torch.zeros(p.shape, dtype=acc.dtype, device=p.device)
        sparse_adagrad_update_(p, acc, mom, scratch, indices, rows.to(p.dtype), self.lr, self.momentum, self.eps,
                               self.sparse_kernel)

    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with `torch.load(weights_only=True)`)."""
        return {"lr": self.lr, "momentum": self.momentum, "eps": self.eps,
                "acc": {n: t.detach().cpu() for n, t in self.acc.items()},
                "mom": {n: t.detach().cpu() for n, t in self.mom.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Copy a `state_dict()` into the preallocated state (in place; a state saved in another
        dtype, e.g. a bf16 model's state from before it was float32, is converted)."""
        for key in ("acc", "mom"):
            mine = getattr(self, key)
            theirs = state.get(key, {})
            if set(mine) != set(theirs):
                raise ValueError(f"optimizer state {key!r} holds {sorted(theirs)}, expected {sorted(mine)}")
            for n, t in theirs.items():
                if t.shape != mine[n].shape:
                    raise ValueError(f"optimizer state {key}[{n!r}] has shape {tuple(t.shape)}, "
                                     f"expected {tuple(mine[n].shape)}")
                mine[n].copy_(t)
