"""CPU threads for training: the compiled kernels' own pool, and torch's ops single-threaded meanwhile.

A CPU training step is dozens of small pieces of work. Run as OpenMP parallel regions (torch's
intra-op threads), every region waits at its end for every thread, including one that another
process has just taken the core from, and idle OpenMP threads spin: on a machine whose cores are
shared, two threads trained over 30 times slower than one. So while the compiled training step
runs, the work is split over the kernels' own threads (`csrc/cpu/thread_pool.h`: chunks are
claimed, a delayed thread costs nothing, idle threads sleep) and torch's own ops run on one thread.

How many: `--threads` / `torch.set_num_threads` / `OMP_NUM_THREADS` when the user set one (they
set torch's count, which this reads), otherwise torch's default; never more than the CPUs this
process may run on (`os.sched_getaffinity`).
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import _extension


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def training_threads() -> int:
    """Threads a CPU training run uses: torch's intra-op count, capped by `usable_cpus()`."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


@contextlib.contextmanager
def cpu_training_threads(n: int | None = None):
    """For the duration of the block: the kernels' pool runs `n` threads (default
    `training_threads()`) and torch's intra-op ops one; torch's count is restored afterwards.
    Without the compiled extension nothing changes (torch's own ops then do all the work)."""
    if not _extension.available():
        yield
        return
    n = training_threads() if n is None else int(n)
    before_torch, before_pool = torch.get_num_threads(), _extension.get_num_threads()
    _extension.set_num_threads(n)
    if before_torch != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before_torch != 1:
            torch.set_num_threads(before_torch)
        _extension.set_num_threads(before_pool)
