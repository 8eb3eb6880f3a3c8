"""Scores against ALL items, in column chunks so memory stays bounded for millions of items.

score of item j for row b: r_bj = act(hidden_b . weight_j + bias_j) (SPEC section 4), with
act one of "linear", "tanh", "elu" (alpha = elu_alpha).

`target_ranks` gives the rank of each row's target item under the three tie modes of SPEC
section 6; `top_k` the k best items per row. Both visit the items in chunks of `chunk_size`
columns (automatic when None: about `DEFAULT_MEMORY_BUDGET` bytes of scores per chunk).

The target's score is always read from the same score matrix the other items' scores come from
(never recomputed by a separate dot product, whose rounding can differ by an ulp and would move
the rank by one, or break ties). With more than one chunk this takes two passes over the chunks:
the first reads the target scores, the second counts; both compute bit-identical chunks (same
operands, same shapes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _extension

ACTIVATIONS = ("linear", "tanh", "elu")
TIE_MODES = ("standard", "conservative", "median")
DEFAULT_MEMORY_BUDGET = 256 * 2 ** 20  # bytes of score chunk (plus comparison temporaries)


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def _check_operands(hidden, weight, bias) -> None:
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected [B, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight: expected [N, {hidden.shape[1]}], got shape {tuple(weight.shape)}")
    if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias: expected [{weight.shape[0]}], got shape {tuple(bias.shape)}")
    if not (hidden.device == weight.device == bias.device):
        raise ValueError(f"hidden, weight, bias: must be on one device, got {hidden.device}, "
                         f"{weight.device}, {bias.device}")
    if not (hidden.dtype == weight.dtype == bias.dtype) or not hidden.dtype.is_floating_point:
        raise TypeError(f"hidden, weight, bias: must share one floating dtype, got {hidden.dtype}, "
                        f"{weight.dtype}, {bias.dtype}")


_ACTIVATION_CODES = {"tanh": 1, "elu": 2}  # loss_math's codes (csrc/loss_math.h)


def _cpu_float32_no_grad(*tensors: torch.Tensor) -> bool:
    """CPU float32 tensors that autograd does not track: what the compiled CPU helpers take."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def _activate(scores: torch.Tensor, activation: str, elu_alpha: float) -> torch.Tensor:
    """act(scores) in place. Float32 on the CPU, without autograd, through the kernels' own vector
    code (the loss's: every element the same code, so equal scores stay equal, and much faster
    than torch's elu); elsewhere torch's."""
    if activation == "linear":
        return scores
    if (_cpu_float32_no_grad(scores) and scores.dim() == 2 and _extension.available()
            and (scores.stride(1) == 1 or scores.shape[1] <= 1)
            and _extension._C._activate_rows_(scores, _ACTIVATION_CODES[activation], float(elu_alpha))):
        return scores
    if activation == "tanh":
        return torch.tanh_(scores)
    if activation == "elu":
        return F.elu_(scores, alpha=elu_alpha)
    return scores


def _addmm(bias: torch.Tensor, hidden: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """bias + hidden @ weight_t. Float32 on the CPU, without autograd, it runs the kernels' own
    product where the extension chose it (`_extension.cpu_gemm() == "avx512"`: about twice torch's
    BLAS on AMD CPUs), split over the kernels' threads; elsewhere torch.addmm."""
    if _cpu_float32_no_grad(hidden, weight_t, bias) and _extension.cpu_gemm() == "avx512":
        out = torch.empty(hidden.shape[0], weight_t.shape[1], dtype=hidden.dtype)
        _extension._C._cpu_mm_out(out, hidden, weight_t, False, bias)
        return out
    return torch.addmm(bias, hidden, weight_t)


def _chunk_scores(hidden, weight, bias, start, stop, activation, elu_alpha):
    """[B, stop-start] scores of items start..stop-1."""
    chunk = _addmm(bias[start:stop], hidden, weight[start:stop].t())
    return _activate(chunk, activation, elu_alpha)


def auto_chunk_size(n_rows: int, n_items: int, element_size: int = 4,
                    memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Columns per chunk so that a [n_rows, chunk] score block and its temporaries fit the budget."""
    per_column = max(1, n_rows) * (element_size + 3)  # scores + two bool comparison masks + slack
    return int(max(1, min(n_items, memory_budget // per_column)))


def _resolve_chunk(chunk_size, hidden, weight) -> int:
    n = weight.shape[0]
    if chunk_size is None:
        return auto_chunk_size(hidden.shape[0], n, hidden.element_size())
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    return min(chunk_size, max(n, 1))


def score_items(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                activation: str = "linear", elu_alpha: float = 1.0) -> torch.Tensor:
    """[B, N] scores of every item for every row: act(hidden @ weight.T + bias). Not chunked."""
    _check_activation(activation)
    _check_operands(hidden, weight, bias)
    return _chunk_scores(hidden, weight, bias, 0, weight.shape[0], activation, elu_alpha)


@torch.no_grad()
def target_ranks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 targets: torch.Tensor, *, activation: str = "linear", elu_alpha: float = 1.0,
                 chunk_size: int | None = None, check_ids: bool = True) -> dict:
    """Rank of each row's target among ALL N items, for the three tie modes (SPEC section 6).

    check_ids: check that the targets are in [0, N) (two host reads: a sync per call on CUDA);
    `evaluate` passes False, having checked the ids once where its schedule is built.

    Returns {"standard": 1 + #(s > t), "conservative": #(s >= t),
    "median": 1 + #(s > t) + (#(s == t) - 1) / 2}, each a float64 tensor [B] on hidden's device,
    where t is the target's score. Counts include the target itself (so #(s >= t) >= 1).
    """
    _check_activation(activation)
    _check_operands(hidden, weight, bias)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets: expected an int tensor [{hidden.shape[0]}]")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets: expected int64 item indices, got {targets.dtype}")
    n = weight.shape[0]
    targets = targets.to(device=hidden.device, dtype=torch.int64)
    if check_ids and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(f"targets: item indices must be in [0, {n})")
    B = hidden.shape[0]
    if _own_products(hidden, weight, bias) and n > 0 and B > 0:
        return _target_ranks_one_pass(hidden, weight, bias, targets, activation, elu_alpha, chunk_size)
    chunk = _resolve_chunk(chunk_size, hidden, weight)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]

    if len(bounds) == 1:
        scores = _chunk_scores(hidden, weight, bias, 0, n, activation, elu_alpha)
        t = scores.gather(1, targets[:, None])
        greater = (scores > t).sum(1, dtype=torch.int32)
        equal = (scores == t).sum(1, dtype=torch.int32)
    else:
        t = torch.empty(B, 1, dtype=hidden.dtype, device=hidden.device)
        for start, stop in bounds:  # pass 1: the targets' scores, from the chunks themselves
            scores = _chunk_scores(hidden, weight, bias, start, stop, activation, elu_alpha)
            inside = (targets >= start) & (targets < stop)
            local = (targets - start).clamp(0, stop - start - 1)
            t = torch.where(inside[:, None], scores.gather(1, local[:, None]), t)
        return _counted_ranks(hidden, weight, bias, t, bounds, activation, elu_alpha)  # pass 2
    return _ranks(greater, equal)


def _ranks(greater: torch.Tensor, equal: torch.Tensor) -> dict:
    """The three tie modes' ranks from #(s > t) and #(s == t)."""
    greater = greater.to(torch.float64)
    equal = equal.to(torch.float64)
    return {"standard": 1.0 + greater, "conservative": greater + equal,
            "median": 1.0 + greater + (equal - 1.0) / 2.0}


def _counted_ranks(hidden, weight, bias, t, bounds, activation, elu_alpha) -> dict:
    """Ranks from the targets' scores t [B, 1] and one counting pass over the item blocks."""
    B = hidden.shape[0]
    greater = torch.zeros(B, dtype=torch.int64, device=hidden.device)
    equal = torch.zeros(B, dtype=torch.int64, device=hidden.device)
    for start, stop in bounds:
        scores = _chunk_scores(hidden, weight, bias, start, stop, activation, elu_alpha)
        greater += (scores > t).sum(1, dtype=torch.int32)
        equal += (scores == t).sum(1, dtype=torch.int32)
    return _ranks(greater, equal)


# Columns per score block of the one-pass ranks: [B, block] floats stay in cache and in the
# allocator's reused memory (a whole [B, N] block costs page faults on every call).
ONE_PASS_BLOCK_BYTES = 4 * 2 ** 20


def _own_products(hidden, weight, bias) -> bool:
    """Whether the scores' product is the kernels' own AVX-512 one (see _addmm): then any element
    can be recomputed alone with the same bits (gemm_f32 computes each element as one chain)."""
    return (_cpu_float32_no_grad(hidden, weight, bias)
            and hidden.is_contiguous() and weight.is_contiguous() and bias.is_contiguous()
            and _extension.cpu_gemm() == "avx512")


def _target_ranks_one_pass(hidden, weight, bias, targets, activation, elu_alpha, chunk_size):
    """target_ranks in one pass over the items: the targets' scores first, each computed alone by
    the same product code (bit-equal to its element of the score matrix) and activated by the same
    code as the matrix, then one pass over cache-sized blocks that counts."""
    B, n = hidden.shape[0], weight.shape[0]
    t = _extension._C._own_gemm_rows(hidden, weight, bias, targets)[:, None]
    t = _activate(t, activation, elu_alpha)
    block = chunk_size if chunk_size is not None else max(48, ONE_PASS_BLOCK_BYTES // (4 * B) // 48 * 48)
    block = _resolve_chunk(block, hidden, weight)
    bounds = [(s, min(s + block, n)) for s in range(0, n, block)]
    return _counted_ranks(hidden, weight, bias, t, bounds, activation, elu_alpha)


@torch.no_grad()
def top_k(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, *,
          activation: str = "linear", elu_alpha: float = 1.0, exclude=None,
          chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items per row: (scores [B, k], indices int64 [B, k]), best first.

    exclude: items that must not be recommended: a bool mask [N] or [B, N] (True = excluded), or
    int item indices [E] (the same items for every row) or [B, E] (per row; entries < 0 are
    padding). Excluded items score -inf; if fewer than k items are left, the last entries of a
    row are excluded ones with score -inf.
    """
    _check_activation(activation)
    _check_operands(hidden, weight, bias)
    n, B = weight.shape[0], hidden.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k: expected an int in [1, {n}], got {k!r}")
    mask = None
    if exclude is not None and torch.as_tensor(exclude).dtype == torch.bool:
        mask = torch.as_tensor(exclude, device=hidden.device)
        if mask.dim() == 1:
            mask = mask[None, :].expand(B, -1)
        if mask.shape != (B, n):
            raise ValueError(f"exclude: a bool mask must be [{n}] or [{B}, {n}], got {tuple(mask.shape)}")
        exclude = None
    if exclude is not None:
        exclude = torch.as_tensor(exclude, device=hidden.device)
        if exclude.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"exclude: expected integer item indices, got {exclude.dtype}")
        exclude = exclude.to(torch.int64)
        if exclude.dim() == 1:
            exclude = exclude[None, :].expand(B, -1)
        if exclude.dim() != 2 or exclude.shape[0] != B:
            raise ValueError(f"exclude: expected [E] or [{B}, E], got shape {tuple(exclude.shape)}")
        if exclude.numel() and int(exclude.max()) >= n:
            raise ValueError(f"exclude: item indices must be < {n}")
    chunk = _resolve_chunk(chunk_size, hidden, weight)
    best_s = best_i = None
    rows = torch.arange(B, device=hidden.device)[:, None]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = _chunk_scores(hidden, weight, bias, start, stop, activation, elu_alpha)
        if mask is not None:
            scores = scores.masked_fill(mask[:, start:stop], float("-inf"))
        if exclude is not None and exclude.numel():
            local = exclude - start
            hit = (local >= 0) & (local < stop - start)
            if bool(hit.any()):
                scores[rows.expand_as(local)[hit], local[hit]] = float("-inf")
        s, i = scores.topk(min(k, stop - start), dim=1)
        i = i + start
        if best_s is None:
            best_s, best_i = s, i
        else:
            merged_s = torch.cat([best_s, s], dim=1)
            merged_i = torch.cat([best_i, i], dim=1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
    return best_s, best_i
