"""Pure-PyTorch reference of the sampled ranking losses (SPEC section 4).

The straightforward, unfused formulation written for clarity: gather the candidate rows, one
matmul, bias, activation, the per-loss formula over a [B, C] matrix, the negatives mask, the mean.
It is the ground truth of the kernel tests, the fallback when the compiled kernels are missing,
and the "unfused baseline" of the benchmarks.

Candidates are the B targets followed by the K samples (C = B + K). Row b's positive is column b;
its negatives are every other column, minus the target columns of invalid rows (`valid`: rows
without a session at an epoch's tail take no part at all), and minus (with mask_accidental_hits)
the columns whose item id equals row b's target. N_s is the number of negatives of the row. A
ranking loss (everything but cross-entropy) of a row with no negatives is 0. The batch loss is the
sum over valid rows divided by B.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Loss name -> the op's loss code.
LOSS_CODES = {"bpr": 0, "top1": 1, "bpr-max": 2, "top1-max": 3, "cross-entropy": 4, "xe": 4}
# Activation name -> the op's activation code ("elu-<alpha>" is accepted too).
ACTIVATION_CODES = {"linear": 0, "tanh": 1, "elu": 2}
CROSS_ENTROPY = 4
LOG_BPRMAX_EPS = math.log(1e-24)


def loss_code(name: str) -> int:
    """The op code of a loss name; ValueError listing the valid names otherwise."""
    if not isinstance(name, str) or name.lower() not in LOSS_CODES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_CODES)}")
    return LOSS_CODES[name.lower()]


def activation_code(name: str, elu_alpha: float = 1.0) -> tuple[int, float]:
    """(op code, elu alpha) of an activation name: "linear", "tanh", "elu" or "elu-<alpha>"."""
    valid = "linear, tanh, elu, elu-<alpha> (e.g. elu-0.5)"
    if not isinstance(name, str):
        raise ValueError(f"unknown activation {name!r}; valid names: {valid}")
    key = name.lower()
    if key in ACTIVATION_CODES:
        return ACTIVATION_CODES[key], float(elu_alpha)
    if key.startswith("elu-"):
        try:
            return ACTIVATION_CODES["elu"], float(key[4:])
        except ValueError:
            pass
    raise ValueError(f"unknown activation {name!r}; valid names: {valid}")


def _activate(x: torch.Tensor, code: int, alpha: float) -> torch.Tensor:
    if code == 1:
        return torch.tanh(x)
    if code == 2:
        return F.elu(x, alpha=alpha)
    return x


def _check_names_and_log_q(loss, activation, elu_alpha, logq, log_q):
    code = loss_code(loss)
    act, alpha = activation_code(activation, elu_alpha)
    if code == CROSS_ENTROPY and logq > 0 and log_q is None:
        raise ValueError("log_q is required with the cross-entropy loss when logq > 0")
    return code, act, alpha


def ranking_loss_from_rows(hidden, weight_rows, bias_rows, candidates, *, loss_code_: int,
                           activation_code_: int, elu_alpha: float, bpreg: float, logq: float,
                           log_q=None, valid=None, mask_accidental_hits: bool = False):
    """The loss from already gathered rows: weight_rows [C,H], bias_rows [C], candidates [C]."""
    B, C = hidden.shape[0], candidates.shape[0]
    scores = _activate(hidden @ weight_rows.t() + bias_rows, activation_code_, elu_alpha)  # [B,C]
    rows = torch.arange(B, device=hidden.device)
    is_pos = torch.zeros(B, C, dtype=torch.bool, device=hidden.device)
    is_pos[rows, rows] = True
    neg = ~is_pos
    if valid is not None:  # a row without a session (epoch tail) is not there: its column is no negative
        neg[:, :B] &= valid[None, :]
    if mask_accidental_hits:
        neg &= candidates[None, :] != candidates[:B, None]
    n_neg = neg.sum(1)
    has_neg = n_neg > 0
    pos = scores[rows, rows][:, None]  # [B,1]

    if loss_code_ == 0:  # BPR
        terms = -F.logsigmoid(pos - scores)
        row_loss = torch.where(neg, terms, 0).sum(1) / n_neg.clamp_min(1)
    elif loss_code_ == 1:  # TOP1
        terms = torch.sigmoid(scores - pos) + torch.sigmoid(scores * scores)
        row_loss = torch.where(neg, terms, 0).sum(1) / n_neg.clamp_min(1)
    elif loss_code_ in (2, 3):  # BPR-max, TOP1-max: softmax over the row's negatives
        # Rows without negatives keep every column (finite, then discarded) to avoid 0/0.
        keep = neg | ~has_neg[:, None]
        log_s = torch.log_softmax(scores.masked_fill(~keep, float("-inf")), dim=1)
        s = log_s.exp()
        if loss_code_ == 2:
            log_p = torch.logsumexp(log_s + F.logsigmoid(pos - scores), dim=1)
            eps = torch.full_like(log_p, LOG_BPRMAX_EPS)
            row_loss = -torch.logaddexp(log_p, eps) + bpreg * (s * scores * scores).sum(1)
        else:
            terms = torch.sigmoid(scores - pos) + torch.sigmoid(scores * scores)
            row_loss = (s * terms).sum(1)
    else:  # cross-entropy over the positive and the negatives
        z = scores
        if logq > 0:
            z = z - logq * log_q[None, :]
        z = z.masked_fill(~(neg | is_pos), float("-inf"))
        row_loss = torch.logsumexp(z, dim=1) - z[rows, rows]
        has_neg = torch.ones_like(has_neg)

    row_loss = torch.where(has_neg, row_loss, 0)
    if valid is not None:
        row_loss = torch.where(valid, row_loss, 0)
    return row_loss.sum() / B


class _SparseRows(torch.autograd.Function):
    """table[idx] whose table gradient is a sparse COO tensor (one entry per index, uncoalesced)."""

    @staticmethod
    def forward(ctx, table, idx):
        ctx.save_for_backward(idx)
        ctx.shape = table.shape
        return table[idx]

    @staticmethod
    def backward(ctx, grad_rows):
        (idx,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(idx.unsqueeze(0), grad_rows, ctx.shape, check_invariants=False), None


def sampled_ranking_loss_reference(hidden, weight, bias, targets, samples, *,
                                   loss="cross-entropy", activation="linear", elu_alpha=1.0,
                                   bpreg=0.0, logq=0.0, log_q=None, valid=None,
                                   mask_accidental_hits=False, sparse_grad=False):
    """Sampled ranking loss, plain PyTorch (same signature and meaning as `sampled_ranking_loss`).

    hidden [B,H], weight [N,H], bias [N], targets int64 [B], samples int64 [K]; log_q [B+K] the log
    of the candidates' unnormalised sampling probabilities (cross-entropy with logq > 0); valid
    bool [B]. Returns the 0-dim batch loss (sum over valid rows / B), differentiable by autograd.
    """
    code, act, alpha = _check_names_and_log_q(loss, activation, elu_alpha, logq, log_q)
    candidates = torch.cat((targets, samples))
    if candidates.numel() and (candidates.min() < 0 or candidates.max() >= weight.shape[0]):
        raise ValueError(f"targets/samples hold an item id out of range [0, {weight.shape[0]})")
    if sparse_grad:
        w_rows, b_rows = _SparseRows.apply(weight, candidates), _SparseRows.apply(bias, candidates)
    else:
        w_rows, b_rows = weight[candidates], bias[candidates]
    return ranking_loss_from_rows(hidden, w_rows, b_rows, candidates,
                                  loss_code_=code, activation_code_=act, elu_alpha=alpha,
                                  bpreg=bpreg, logq=logq, log_q=log_q, valid=valid,
                                  mask_accidental_hits=mask_accidental_hits)
