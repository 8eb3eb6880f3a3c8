"""Shared benchmark machinery: machine description, timing, results files and plots.

Method (issue #5): warm up, then the median of many repeats; inputs rotated among several sets so
that caches don't flatter; both sides of a comparison timed on the same inputs in the same run.
CPU timings use torch.utils.benchmark.Timer (blocked_autorange); CUDA timings use CUDA events.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run from a checkout without installing


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The measured tree's commit: GRU4REC_COMMIT when set (a device machine's copy of .git can lag
    the tree it was sent, so the caller names the commit), else git's HEAD (+dirty)."""
    if os.environ.get("GRU4REC_COMMIT"):
        return os.environ["GRU4REC_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        # Results files do not make a measured tree dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GRU4REC_COMMIT", "unknown")


def machine_info(device: torch.device) -> dict:
    import gru4rec_ext._extension as ext
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "device": str(device),
        "extension": ext.build_info(),
        "cpu_gemm": ext.cpu_gemm(),  # the CPU kernels' float32 matrix product: avx512 (ours) or blas
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_slug(device: torch.device) -> str:
    """Folder name under benchmarks/results/ for this machine."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{cpu_model()}-{torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower()


def results_dir(device: torch.device, out: str | None = None) -> str:
    path = out or os.path.join(HERE, "results", machine_slug(device))
    os.makedirs(path, exist_ok=True)
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[int], object], device: torch.device, *, n_inputs: int = 1,
                min_time: float = 0.3, max_repeats: int = 2000, warmup: int = 3) -> float:
    """Median seconds of one call fn(i), i cycling through n_inputs input sets.

    CPU: torch.utils.benchmark.Timer.blocked_autorange (median over blocks). CUDA: one CUDA event
    pair per call, median over calls, after warm-up.
    """
    counter = {"i": 0}

    def call():
        i = counter["i"]
        counter["i"] = (i + 1) % n_inputs
        return fn(i)

    for _ in range(warmup):
        call()
    synchronize(device)
    if device.type == "cuda":
        times = []
        start_all = time.perf_counter()
        while len(times) < max_repeats and (len(times) < 10 or time.perf_counter() - start_all < min_time):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            call()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        return statistics.median(times)
    from torch.utils.benchmark import Timer
    timer = Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median


def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
    os.replace(tmp, path)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Plain text table of rows (dicts) with the given columns; floats shown with 4 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def bar_plot(path: str, labels: Sequence[str], series: dict, title: str, ylabel: str,
             log: bool = True, hline: float | None = None) -> None:
    """Grouped bar chart (one group per label, one bar per series) saved as PNG; no-op without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(labels) * n + 2), 4.5))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    if log:
        ax.set_yscale("log")
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
