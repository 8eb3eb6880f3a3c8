"""Loads the compiled extension `gru4rec_ext._C` once, and says what it provides.

Importing `_C` registers the `torch.ops.gru4rec.*` operators. When the extension is not built,
every op falls back to its pure-PyTorch reference; that fallback is logged once per op, never
silently taken.
"""
from __future__ import annotations

import glob
import logging
import os

import torch

logger = logging.getLogger("gru4rec_ext")

try:
    from . import _C  # noqa: F401  (registers torch.ops.gru4rec.*)
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _here = os.path.dirname(os.path.abspath(__file__))
    if not glob.glob(os.path.join(_here, "_C*.so")) and not glob.glob(os.path.join(_here, "_C*.pyd")):
        # Python's own message here ("partially initialized module ... circular import") misleads.
        exc = ImportError(f"no compiled gru4rec_ext._C in {_here}: build it with `pip install "
                          "--no-build-isolation -e .` or `python setup.py build_ext --inplace`")
    _IMPORT_ERROR = exc

_warned: set[str] = set()


def available() -> bool:
    """True when the compiled kernels were imported."""
    return _C is not None


def build_info() -> dict:
    """What the extension was built with ({} when it is not built)."""
    return dict(_C.build_info()) if _C is not None else {}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when `gru4rec::<op>` has a kernel registered for `dispatch_key` ("CPU", "CUDA")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gru4rec::{op}", dispatch_key)


def use_kernel(op: str, device: torch.device) -> bool:
    """Whether `gru4rec::<op>` runs compiled on `device`; logs the fallback once per op and device."""
    key = "CUDA" if device.type == "cuda" else "CPU" if device.type == "cpu" else device.type
    if has_kernel(op, key):
        return True
    tag = f"{op}:{key}"
    if tag not in _warned:
        _warned.add(tag)
        why = f"the extension is not built ({_IMPORT_ERROR})" if _C is None else \
            f"it has no {key} kernel"
        logger.warning("gru4rec_ext: %s runs the pure-PyTorch reference on %s because %s",
                       op, key, why)
    return False


def set_num_threads(n: int) -> None:
    """Threads the compiled CPU kernels use, the calling thread included.

    They are the kernels' own worker threads (csrc/cpu/thread_pool.h), not OpenMP's: work is claimed
    in chunks, so a worker that a busy core delays costs nothing, and idle workers sleep instead of
    spinning. Without the extension there is nothing to set.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"the number of CPU threads must be >= 1, got {n}")
    if _C is not None:
        _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the compiled CPU kernels use (default: torch's intra-op thread count when first asked)."""
    return int(_C.get_num_threads()) if _C is not None else 1


def cpu_gemm() -> str:
    """The float32 matrix product of the compiled CPU kernels: "avx512" (the package's own, taken
    on AVX-512 CPUs other than Intel's, where torch's MKL runs AVX2 code) or "blas" (torch's;
    GRU4REC_GEMM=blas in the environment forces it, GRU4REC_GEMM=own forces ours on any AVX-512
    CPU). "none" when the extension is not built."""
    return str(_C.cpu_gemm()) if _C is not None else "none"


def set_cpu_gemm(name: str) -> None:
    """Chooses the compiled CPU kernels' float32 matrix product for this process: "avx512" (ours;
    raises on a CPU without AVX-512F) or "blas" (torch's). For side-by-side benchmarks and tests;
    the default (see cpu_gemm) is what a CPU should use."""
    if _C is None:
        raise RuntimeError(f"set_cpu_gemm: the extension is not built ({_IMPORT_ERROR})")
    _C.set_cpu_gemm(name)
