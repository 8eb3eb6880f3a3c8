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


class _Progress:
    """The loop's progress bar and its reads of the loss window (every LOG_EVERY steps)."""

    def __init__(self, n_steps: int, batch_size: int, epoch: int, n_epochs: int, progress: bool, t0: float,
                 device):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=n_steps, disable=not progress, desc=f"epoch {epoch + 1}/{n_epochs}", unit="step",
                        leave=False)
        self.batch_size, self.epoch = batch_size, epoch
        self.last_t, self.last_s = t0, 0
        self.loss_sum = torch.zeros((), device=device)

    def read(self, s: int, window: torch.Tensor) -> None:
        """After step s (0-based): read the window's loss sum (the one host read), add it to the
        epoch's sum, zero it, update the bar; stop on a non-finite loss."""
        w = float(window)
        self.loss_sum += window
        window.zero_()
        now = time.perf_counter()
        rate = (s + 1 - self.last_s) * self.batch_size / max(now - self.last_t, 1e-9)
        self.bar.set_postfix(loss=f"{w / (s + 1 - self.last_s):.4f}", ev_s=f"{rate:,.0f}")
        self.bar.update(s + 1 - self.last_s)
        self.last_t, self.last_s = now, s + 1
        if not math.isfinite(w):
            self.bar.close()
            raise FloatingPointError(f"training loss became {w} in epoch {self.epoch + 1} at step {s + 1}")


def run_epoch(step, schedule, hidden: torch.Tensor, *, epoch: int, n_epochs: int, max_steps: int | None = None,
              progress: bool = True, t0: float | None = None, threads=None) -> dict:
    """Run `step` over the steps of `schedule` (an EpochSchedule on the CPU; it is moved to the
    device of `hidden` once).

    step(inputs [B], targets [B], reset [B], valid [B] or None, hidden) -> (loss [], hidden): one
    training step (`train_step.TrainStep`); valid is None on steps without a masked row. Or a step
    that reads the schedule itself (`reads_schedule`: `train_step.StaticStep`, the CUDA step):
    `step.start_epoch(schedule, hidden)`, then `step.advance()` per step, its loss summed into
    `step.window`. hidden: the initial state [L,B,H]. Runs the first `max_steps` steps when given.
    t0: when the epoch started (perf_counter; default now), for its seconds and events/s.
    threads: a `threads.StepThreads` that sets the CPU kernels' thread count of each step from
    their times, or None.

    Returns {"epoch" (1-based), "loss" (mean batch loss), "events_per_s", "seconds", "steps",
    "events" (the valid training pairs of the steps run)}.
    """
    t0 = time.perf_counter() if t0 is None else t0
    n_steps = schedule.n_steps if max_steps is None else min(int(max_steps), schedule.n_steps)
    n_events = schedule.n_pairs if n_steps == schedule.n_steps else int(schedule.valid[:n_steps].sum())
    device = hidden.device
    log = _Progress(n_steps, schedule.batch_size, epoch, n_epochs, progress, t0, device)
    if getattr(step, "reads_schedule", False):
        step.start_epoch(schedule, hidden)  # the step reads its rows through a device-side counter
        window = step.window
        for s in range(n_steps):
            step.advance()
            if (s + 1) % LOG_EVERY == 0 or s + 1 == n_steps:
                log.read(s, window)
    else:
        full = schedule.valid.all(dim=1).tolist()  # host side, once per epoch: steps with no masked row
        sched = schedule.to(device)
        window = torch.zeros((), device=device)
        inputs_all, targets_all, reset_all, valid_all = sched.inputs, sched.targets, sched.reset, sched.valid
        for s in range(n_steps):
            if threads is not None:
                threads.before()
                started = time.perf_counter()
            loss, hidden = step(inputs_all[s], targets_all[s], reset_all[s], None if full[s] else valid_all[s],
                                hidden)
            if threads is not None:
                threads.after(time.perf_counter() - started)
            window += loss
            if (s + 1) % LOG_EVERY == 0 or s + 1 == n_steps:
                log.read(s, window)  # the one host read, every LOG_EVERY steps
    log.bar.close()
    seconds = time.perf_counter() - t0
    result = {"epoch": epoch + 1, "loss": float(log.loss_sum) / max(n_steps, 1),
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
