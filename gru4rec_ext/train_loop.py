"""The epoch loop of the trainer: steps over an epoch schedule, progress bar and logging (also
the JSON log of a run).

The loop keeps SPEC section 8's rules: the schedule lives on the device, every step has the same
shapes (a valid mask at the tail), and the loss is accumulated on the device and read on the host
only every `LOG_EVERY` steps (the progress bar's loss and events/s, and the finiteness check).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

logger = logging.getLogger("gru4rec_ext")

LOG_EVERY = 100


def run_epoch(step, schedule, hidden: torch.Tensor, *, epoch: int, n_epochs: int, max_steps: int | None = None,
              progress: bool = True, t0: float | None = None) -> dict:
    """Run `step` over the steps of `schedule` (an EpochSchedule on the CPU; it is moved to the
    device of `hidden` once).

    step(inputs [B], targets [B], reset [B], valid [B] or None, hidden) -> (loss [], hidden): one
    training step (`train_step.TrainStep`); valid is None on steps without a masked row. hidden:
    the initial state [L,B,H]. Runs the first `max_steps` steps when given. t0: when the epoch
    started (perf_counter; default now), for its seconds and events/s.

    Returns {"epoch" (1-based), "loss" (mean batch loss), "events_per_s", "seconds", "steps",
    "events" (the valid training pairs of the steps run)}.
    """
    from tqdm.auto import tqdm
    t0 = time.perf_counter() if t0 is None else t0
    batch_size = schedule.batch_size
    full = schedule.valid.all(dim=1).tolist()  # host side, once per epoch: steps with no masked row
    n_steps = schedule.n_steps if max_steps is None else min(int(max_steps), schedule.n_steps)
    n_events = schedule.n_pairs if n_steps == schedule.n_steps else int(schedule.valid[:n_steps].sum())
    device = hidden.device
    sched = schedule.to(device)
    loss_sum = torch.zeros((), device=device)
    window = torch.zeros((), device=device)
    inputs_all, targets_all, reset_all, valid_all = sched.inputs, sched.targets, sched.reset, sched.valid
    bar = tqdm(total=n_steps, disable=not progress, desc=f"epoch {epoch + 1}/{n_epochs}", unit="step", leave=False)
    last_t, last_s = t0, 0
    for s in range(n_steps):
        loss, hidden = step(inputs_all[s], targets_all[s], reset_all[s], None if full[s] else valid_all[s], hidden)
        window += loss
        if (s + 1) % LOG_EVERY == 0 or s + 1 == n_steps:
            w = float(window)  # the one host read, every LOG_EVERY steps
            loss_sum += window
            window.zero_()
            now = time.perf_counter()
            rate = (s + 1 - last_s) * batch_size / max(now - last_t, 1e-9)
            bar.set_postfix(loss=f"{w / (s + 1 - last_s):.4f}", ev_s=f"{rate:,.0f}")
            bar.update(s + 1 - last_s)
            last_t, last_s = now, s + 1
            if not math.isfinite(w):
                bar.close()
                raise FloatingPointError(f"training loss became {w} in epoch {epoch + 1} at step {s + 1}")
    bar.close()
    seconds = time.perf_counter() - t0
    result = {"epoch": epoch + 1, "loss": float(loss_sum) / max(n_steps, 1),
              "events_per_s": n_events / max(seconds, 1e-9), "seconds": seconds, "steps": n_steps,
              "events": n_events}
    logger.info("epoch %d/%d: loss %.4f, %.0f events/s, %.1f s", epoch + 1, n_epochs, result["loss"],
                result["events_per_s"], seconds)
    return result


def headline(metrics: dict) -> str:
    """Recall and MRR at the largest cutoff for each tie mode, on one line."""
    parts = []
    for mode, values in metrics.items():
        if isinstance(values, dict) and values:
            cut = max(int(k.split("@")[1]) for k in values if "@" in k)
            parts.append(f"{mode}: recall@{cut} {values.get(f'recall@{cut}', float('nan')):.4f}, "
                         f"mrr@{cut} {values.get(f'mrr@{cut}', float('nan')):.4f}")
    return "; ".join(parts)


def write_json(path, summary: dict) -> None:
    """Write the run's summary (per-epoch results, final metrics) to `path` as JSON, atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    os.replace(tmp, path)
