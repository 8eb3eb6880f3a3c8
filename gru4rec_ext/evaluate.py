"""Next-item evaluation over test sessions (SPEC section 6): Recall@N and MRR@N, three tie modes.

Test sessions run session-parallel (`build_schedule`, B fixed, tail masked) with no training; the
hidden state starts at zero for each session. Every (item, next item) pair is one case, ranked
among ALL items of the model (`scoring.target_ranks`).

The model protocol used here (implemented by `GRU4Rec`):
  hidden = model.init_hidden(batch_size, device)         -> [L, B, H] zeros
  out, hidden = model.step(item_ids [B], reset [B], hidden) -> out [B, H] (top layer), new hidden;
                                                             rows with reset are zeroed first
  weight, bias, activation, elu_alpha = model.output_layer()  -> [N, H], [N], str, float
  model.n_items
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .batching import build_schedule
from .data import DataError, SessionData
from .scoring import TIE_MODES, target_ranks

logger = logging.getLogger("gru4rec_ext")

DEFAULT_CUTOFFS = (1, 5, 10, 20)


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def evaluate(model, data: SessionData, *, batch_size: int = 512,
             cutoffs: Sequence[int] = DEFAULT_CUTOFFS, tie_modes: Sequence[str] = TIE_MODES,
             device=None, progress: bool = True, chunk_size: int | None = None) -> dict:
    """Recall@N and MRR@N of `model` on `data` (encoded with the model's item map).

    Returns {"n_cases": int, mode: {"recall@N": float, "mrr@N": float, ...} for each tie mode}.
    Recall@N = mean over cases of [rank <= N]; MRR@N = mean of [rank <= N] / rank. A bfloat16 or
    float16 model's scores are computed in float32 (from its weights and outputs). Runs under
    torch.no_grad() with model.eval(), and restores the model's training mode afterwards.
    `device` defaults to the model's parameters' device; `chunk_size` goes to `target_ranks`.
    Raises FloatingPointError when the model's output is NaN/inf for some case.
    """
    if not isinstance(data, SessionData):
        raise TypeError(f"data: expected a SessionData, got {type(data).__name__}")
    cutoffs = tuple(cutoffs)
    if not cutoffs or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cutoffs):
        raise ValueError(f"cutoffs: expected positive ints, got {cutoffs!r}")
    tie_modes = tuple(tie_modes)
    bad = [m for m in tie_modes if m not in TIE_MODES]
    if bad or not tie_modes:
        raise ValueError(f"tie_modes: expected a non-empty subset of {TIE_MODES}, got {tie_modes!r}")
    n_items = int(model.n_items)
    if data.n_items != n_items:
        raise ValueError(f"data: its item map has {data.n_items} items but the model has {n_items}; "
                         "encode the test data with the model's item map (drop_unknown=True)")
    device = _model_device(model) if device is None else torch.device(device)

    host = build_schedule(data, batch_size, n_items=n_items)  # ids checked once, not per step
    if host.n_pairs == 0:
        raise DataError(f"{data.name}: no (item, next item) pairs to evaluate")
    sched = host.to(device)
    # At the tail of the schedule most slots are empty: score only the valid rows there (row
    # indices precomputed on the host, so the loop never waits on the device).
    n_valid = host.valid.sum(1).tolist()
    partial_rows = {step: torch.nonzero(host.valid[step]).squeeze(1).to(device)
                    for step, count in enumerate(n_valid) if count < batch_size}
    limits = torch.tensor(cutoffs, dtype=torch.float64, device=device)
    # sums[mode, cutoff, 0] = hits, sums[mode, cutoff, 1] = reciprocal ranks of hits
    sums = torch.zeros(len(tie_modes), len(cutoffs), 2, dtype=torch.float64, device=device)
    n_nonfinite = torch.zeros((), dtype=torch.int64, device=device)  # cases with NaN/inf output

    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            weight, bias, activation, elu_alpha = model.output_layer()
            if weight.dtype in (torch.bfloat16, torch.float16):  # rank float32 scores: no ties made by rounding
                weight, bias = weight.float(), bias.float()
            hidden = model.init_hidden(batch_size, device)
            for step in tqdm(range(sched.n_steps), desc="evaluate", unit="step", disable=not progress):
                out, hidden = model.step(sched.inputs[step], sched.reset[step], hidden)
                out = out.to(weight.dtype)
                targets = sched.targets[step]
                rows = partial_rows.get(step)
                if rows is not None:
                    out, targets = out.index_select(0, rows), targets.index_select(0, rows)
                n_nonfinite += (~torch.isfinite(out)).any(1).sum()
                ranks = target_ranks(out, weight, bias, targets, activation=activation,
                                     elu_alpha=elu_alpha, chunk_size=chunk_size)
                for m, mode in enumerate(tie_modes):
                    rank = ranks[mode]
                    hit = (rank[None, :] <= limits[:, None]).to(torch.float64)  # [C, valid rows]
                    sums[m, :, 0] += hit.sum(1)
                    sums[m, :, 1] += (hit / rank).sum(1)
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)

    if int(n_nonfinite):
        raise FloatingPointError(f"{data.name}: the model's output is NaN or infinite in "
                                 f"{int(n_nonfinite)} of {sched.n_pairs} cases; the ranks would be "
                                 "meaningless (did training diverge?)")
    sums = (sums / sched.n_pairs).cpu().tolist()
    result: dict = {"n_cases": sched.n_pairs}
    for m, mode in enumerate(tie_modes):
        metrics = {f"recall@{cut}": sums[m][c][0] for c, cut in enumerate(cutoffs)}
        metrics.update({f"mrr@{cut}": sums[m][c][1] for c, cut in enumerate(cutoffs)})
        result[mode] = metrics
    logger.info("evaluated %d cases of %s: %s", sched.n_pairs, data.name,
                {mode: {k: round(v, 4) for k, v in result[mode].items() if k.endswith("@20")}
                 for mode in tie_modes})
    return result


def format_metrics(result: dict) -> str:
    """A text table of an `evaluate` result: one row per metric, one column per tie mode."""
    modes = [m for m in TIE_MODES if m in result] + \
        [m for m in result if m not in TIE_MODES and isinstance(result[m], dict)]
    if not modes:
        raise ValueError("result: no tie mode entries (expected the dict that evaluate returns)")
    names = list(result[modes[0]])
    width = max(len(n) for n in names + ["metric"])
    lines = [f"cases: {result.get('n_cases', '?')}",
             "  ".join(["metric".ljust(width)] + [m.rjust(12) for m in modes])]
    for name in names:
        cells = [f"{result[m][name]:.4f}".rjust(12) if name in result[m] else "".rjust(12) for m in modes]
        lines.append("  ".join([name.ljust(width)] + cells))
    return "\n".join(lines)
