"""Adagrad with momentum (SPEC section 5), dense for the GRU weights and row-sparse for item tables.

    acc += g^2;  v = mu * v - lr * g / sqrt(acc + eps);  p += v
    (momentum 0: p -= lr * g / sqrt(acc + eps))

The row-sparse update takes row indices with duplicates and one gradient row per index; rows
touched several times have their gradients summed first and are updated once (acc and v too);
untouched rows are left alone. All state is preallocated and every update is in place and free of
host synchronisation (no `unique`, no data-dependent shapes).
"""
from __future__ import annotations

import torch

from . import _extension

EPS = 1e-6


def dense_adagrad_update_(params, grads, accs, moms, lr: float, momentum: float, eps: float = EPS,
                          use_kernel: bool | None = None):
    """In-place dense update of lists of tensors. `moms` is ignored when momentum 0.

    On the CPU the compiled `gru4rec::dense_adagrad_` (one fused pass per tensor) when built
    (use_kernel None: when available); otherwise, and on CUDA, torch's foreach ops.
    """
    if use_kernel is None:
        use_kernel = params[0].device.type == "cpu" and _extension.has_kernel("dense_adagrad_", "CPU")
    if use_kernel:
        torch.ops.gru4rec.dense_adagrad_(list(params), list(accs), list(moms) if momentum > 0 else [],
                                         [g.contiguous() for g in grads], float(lr), float(momentum), float(eps))
        return
    torch._foreach_addcmul_(accs, grads, grads)
    std = torch._foreach_add(accs, eps)
    torch._foreach_sqrt_(std)
    if momentum > 0:
        torch._foreach_mul_(moms, momentum)
        torch._foreach_addcdiv_(moms, grads, std, value=-lr)
        torch._foreach_add_(params, moms)
    else:
        torch._foreach_addcdiv_(params, grads, std, value=-lr)


def sparse_adagrad_update_(param, acc, mom, scratch, indices, rows, lr: float, momentum: float,
                           eps: float = EPS, use_kernel: bool | None = None):
    """In-place row-sparse update; the compiled `gru4rec::sparse_adagrad_` when built for the device
    (use_kernel None: when available; False: the PyTorch version), else `sparse_adagrad_update_torch_`."""
    if use_kernel is None:
        use_kernel = _extension.has_kernel("sparse_adagrad_", "CUDA" if param.device.type == "cuda" else "CPU")
    if use_kernel:
        as2d = (lambda t: t.view(t.shape[0], -1)) if param.dim() == 1 else (lambda t: t)
        mom2d = as2d(mom) if mom is not None else param.new_empty(0, 1)
        torch.ops.gru4rec.sparse_adagrad_(as2d(param), as2d(acc), mom2d, indices.contiguous(),
                                          as2d(rows.contiguous()), float(lr), float(momentum), float(eps))
        return
    sparse_adagrad_update_torch_(param, acc, mom, scratch, indices, rows, lr, momentum, eps)


def sparse_adagrad_update_torch_(param, acc, mom, scratch, indices, rows, lr: float, momentum: float,
                                 eps: float = EPS):
    """In-place row-sparse update of `param` [N, D] (or [N]) at rows `indices` [M] (duplicates allowed).

    rows: gradient rows [M, D] (or [M]) belonging to `indices`; `scratch` is a zero tensor shaped
    like `param` (kept zero between calls) used to sum duplicates without a host sync.
    """
    scratch.index_add_(0, indices, rows)
    g = scratch.index_select(0, indices)  # every occurrence of a row sees the summed gradient
    scratch.index_fill_(0, indices, 0)
    a = acc.index_select(0, indices).addcmul_(g, g)
    acc.index_copy_(0, indices, a)  # duplicates write identical values
    step = g.div_(a.add_(eps).sqrt_())
    if momentum > 0:
        v = mom.index_select(0, indices).mul_(momentum).add_(step, alpha=-lr)
        mom.index_copy_(0, indices, v)
        param.index_copy_(0, indices, param.index_select(0, indices).add_(v))
    else:
        param.index_copy_(0, indices, param.index_select(0, indices).add_(step, alpha=-lr))


class AdagradM:
    """Adagrad with momentum over named dense and row-sparse parameters.

    Args:
        dense: {name: parameter} updated with full gradients (`step_dense`).
        sparse: {name: parameter} updated on touched rows only (`step_sparse`).
        lr, momentum, eps: SPEC section 5.
        sparse_kernel: use the compiled updates (None: when built for the device; False: the
            PyTorch versions, for the sparse and the dense update alike).
    """

    def __init__(self, dense: dict, sparse: dict, lr: float, momentum: float = 0.0, eps: float = EPS,
                 sparse_kernel: bool | None = None):
        if lr <= 0:
            raise ValueError(f"learning_rate must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        overlap = set(dense) & set(sparse)
        if overlap:
            raise ValueError(f"parameters both dense and sparse: {sorted(overlap)}")
        self.lr, self.momentum, self.eps = float(lr), float(momentum), float(eps)
        self.dense = dict(dense)
        self.sparse = dict(sparse)
        self.acc = {n: torch.zeros_like(p) for n, p in {**self.dense, **self.sparse}.items()}
        self.mom = {n: torch.zeros_like(p) for n, p in {**self.dense, **self.sparse}.items()} \
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
        dense_adagrad_update_([self.dense[n] for n in names], list(grads),
                              [self.acc[n] for n in names],
                              [self.mom[n] for n in names] if self.momentum > 0 else None,
                              self.lr, self.momentum, self.eps, self.dense_kernel)

    @torch.no_grad()
    def step_sparse(self, name: str, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Update the touched rows `indices` [M] of sparse parameter `name` with gradient rows [M, ...]."""
        if name not in self.sparse:
            raise KeyError(f"{name!r} is not a sparse parameter of this optimizer")
        p = self.sparse[name]
        if self.sparse_kernel is None:  # decided once, on the first update
            self.sparse_kernel = _extension.has_kernel("sparse_adagrad_", "CUDA" if p.device.type == "cuda" else "CPU")
        if rows.shape[0] != indices.shape[0] or rows.shape[1:] != p.shape[1:]:
            raise ValueError(f"rows for {name!r} must be [{indices.shape[0]}, *{tuple(p.shape[1:])}], "
                             f"got {tuple(rows.shape)}")
        scratch = None
        if not self.sparse_kernel:
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = torch.zeros_like(p)
        sparse_adagrad_update_(p, self.acc[name], self.mom.get(name), scratch,
                               indices, rows.to(p.dtype), self.lr, self.momentum, self.eps, self.sparse_kernel)

    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with `torch.load(weights_only=True)`)."""
        return {"lr": self.lr, "momentum": self.momentum, "eps": self.eps,
                "acc": {n: t.detach().cpu() for n, t in self.acc.items()},
                "mom": {n: t.detach().cpu() for n, t in self.mom.items()}}

    def load_state_dict(self, state: dict) -> None:
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
