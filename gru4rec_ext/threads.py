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

Two threads are not always faster than one: when other work takes a core, or when the host runs
a VM's two vCPUs on one physical core, they can be slower than one thread. Unless the count was
set explicitly (`--threads`, `OMP_NUM_THREADS`, or `Trainer(adaptive_threads=False)`), the
trainer times its steps and runs each stretch of steps on whichever count was faster in the
probe before it (`StepThreads`). It does so only with the package's own matrix product, which
gives the same bits however a product is split, so the choice never changes the results; with
torch's BLAS (Intel CPUs, GRU4REC_GEMM=blas) the count stays fixed.
"""
from __future__ import annotations

import contextlib
import os
import statistics

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


_explicit = False


def set_explicit_threads(explicit: bool = True) -> None:
    """Marks the thread count as chosen by the user (the CLI's `--threads`): training then keeps
    it instead of choosing between it and one thread from step times."""
    global _explicit
    _explicit = bool(explicit)


def threads_are_explicit() -> bool:
    """Whether the user fixed the thread count: `set_explicit_threads()` or OMP_NUM_THREADS."""
    return _explicit or bool(os.environ.get("OMP_NUM_THREADS"))


class StepThreads:
    """The kernels' thread count for each step of CPU training, chosen from step times.

    A probe times `probe` steps on `threads` threads and `probe` on one (the first `skip` of each,
    just after the switch, are not counted). The steps up to the next probe run on one thread only
    if its median step was at least 5% shorter. Probes come every `period` steps; while they keep
    choosing `threads` the period doubles, up to `max_period`, and a probe that chooses one thread
    brings it back to `period`. Between probes, the median of each `probe` steps is compared with
    the chosen count's median in the probe: when the machine changed (half slower or a third
    faster: another process started or stopped), the next step probes again.

    One StepThreads serves a whole training run (the trainer keeps it across epochs). Call
    `before()` before each step, `after(seconds)` with its wall time, and `resume()` when something
    else may have set the pool's count in between; `threads_used` counts the steps on each count.
    """

    def __init__(self, threads: int, period: int = 1000, probe: int = 12, skip: int = 2,
                 max_period: int = 8000):
        if threads < 2:
            raise ValueError(f"StepThreads needs at least 2 threads to choose from, got {threads}")
        if not 0 <= skip < probe or 2 * probe > period or max_period < period:
            raise ValueError(f"StepThreads: need 0 <= skip < probe, 2 * probe <= period <= max_period, got "
                             f"period={period}, probe={probe}, skip={skip}, max_period={max_period}")
        self.threads, self.base_period, self.probe, self.skip = int(threads), int(period), int(probe), int(skip)
        self.max_period = int(max_period)
        self.period = self.base_period
        self.chosen = self.threads
        self.k = 0  # steps since the current probe began
        self.times = {self.threads: [], 1: []}
        self.reference = None  # the chosen count's median step in the last probe
        self.recent = []       # step times since, a probe's length at a time
        self.threads_used = {self.threads: 0, 1: 0}
        self.current = None

    def resume(self) -> None:
        """Before steps after something else may have set the pool's count (a new epoch)."""
        self.current = None

    def count(self) -> int:
        """The thread count of the next step."""
        if self.k < self.probe:
            return self.threads
        if self.k < 2 * self.probe:
            return 1
        return self.chosen

    def before(self) -> None:
        n = self.count()
        if n != self.current:
            _extension.set_num_threads(n)
            self.current = n
        self.threads_used[n] += 1

    def after(self, seconds: float) -> None:
        k = self.k
        if k < 2 * self.probe:
            if k % self.probe >= self.skip:
                self.times[self.count()].append(seconds)
            if k == 2 * self.probe - 1:
                chosen = self._choose()
                # Fewer threads than allowed is the choice to re-check soonest.
                same = chosen == self.chosen and chosen == self.threads
                self.period = min(2 * self.period, self.max_period) if same else self.base_period
                self.chosen = chosen
                self.reference = statistics.median(self.times[chosen]) if self.times[chosen] else None
                self.recent = []
        elif self.reference is not None:
            self.recent.append(seconds)
            if len(self.recent) == self.probe:
                ratio = statistics.median(self.recent) / max(self.reference, 1e-12)
                self.recent = []
                if ratio > 1.5 or ratio < 0.67:  # the machine changed: probe again now
                    self.period = self.base_period
                    self.k = self.period - 1
        self.k += 1
        if self.k >= self.period:
            self.k = 0
            self.times = {self.threads: [], 1: []}

    def _choose(self) -> int:
        many, one = self.times[self.threads], self.times[1]
        if not many or not one:
            return self.threads
        return 1 if statistics.median(one) < 0.95 * statistics.median(many) else self.threads
