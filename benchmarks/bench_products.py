"""The CPU kernels' float32 matrix product against torch's, on the training step's shapes.

The compiled CPU kernels compute their products with the package's own AVX-512 product
(csrc/cpu/gemm_avx512.cpp) where `gru4rec_ext._extension.cpu_gemm()` says "avx512" (AVX-512 CPUs
other than Intel's, where torch's MKL runs AVX2 code), else with torch's BLAS. Side by side in one
run, one thread, rounds alternating between the two: `own` is one call of that product
(`_C._own_gemm_out`), `torch.mm` is torch's into the same preallocated output. Shapes: the GRU's
forward product, input gradient and weight gradient, and the loss's score product, hidden
gradient and row gradient, at the rsc15 (B=32, H=100, 2,080 candidates) and retailrocket (B=80,
H=224, 2,128 candidates) presets; the transposed operand is a transposed view, as in the kernels.

    PYTHONPATH=. python benchmarks/bench_products.py [--rounds 7] [--out DIR]

Writes bench_products.json and bench_products.txt to benchmarks/results/<machine>/.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import common  # noqa: E402  (sets sys.path to the checkout)
from gru4rec_ext import _extension

# (name, M, N, K, a transposed, b transposed): out[M,N] = a[M,K] @ b[K,N].
CASES = [
    ("rsc15 GRU x @ W^T", 32, 300, 100, False, True),
    ("rsc15 GRU dG @ W", 32, 100, 300, False, False),
    ("rsc15 GRU dG^T @ x", 300, 100, 32, True, False),
    ("rsc15 loss h @ rows^T", 32, 2080, 100, False, True),
    ("rsc15 loss dS @ rows", 32, 100, 2080, False, False),
    ("rsc15 loss dS^T @ h", 2080, 100, 32, True, False),
    ("retailrocket GRU x @ W^T", 80, 672, 224, False, True),
    ("retailrocket GRU dG @ W", 80, 224, 672, False, False),
    ("retailrocket GRU dG^T @ x", 672, 224, 80, True, False),
    ("retailrocket loss h @ rows^T", 80, 2128, 224, False, True),
    ("retailrocket loss dS @ rows", 80, 224, 2128, False, False),
    ("retailrocket loss dS^T @ h", 2128, 224, 80, True, False),
    ("square 512", 512, 512, 512, False, False),
]


def best_seconds(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not _extension.available():
        sys.exit("bench_products: the compiled extension is not built")
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        sys.exit("bench_products: this CPU has no AVX-512; the kernels use torch's BLAS here")
    torch.set_num_threads(1)
    C = _extension._C
    rows, lines = [], []
    header = (f"{'product':<30} {'M':>5} {'N':>5} {'K':>5} {'own µs':>8} {'GFLOP/s':>8} {'torch.mm µs':>11} "
              f"{'GFLOP/s':>8} {'torch/own':>9}")
    lines += [header, "-" * len(header)]
    g = torch.Generator().manual_seed(0)
    for name, M, N, K, a_t, b_t in CASES:
        a = torch.randn(K, M, generator=g).t() if a_t else torch.randn(M, K, generator=g)
        b = torch.randn(N, K, generator=g).t() if b_t else torch.randn(K, N, generator=g)
        out = torch.empty(M, N)
        calls = max(20, int(1e8 / (M * N * K)))
        fns = {"own": lambda: C._own_gemm_out(out, a, b), "torch": lambda: torch.mm(a, b, out=out)}
        for fn in fns.values():
            for _ in range(5):
                fn()
        times = {k: [] for k in fns}
        for r in range(args.rounds):
            for k in (fns if r % 2 == 0 else reversed(list(fns))):
                times[k].append(best_seconds(fns[k], calls))
        own, ref = min(times["own"]), min(times["torch"])
        ratio = statistics.median(t / o for t, o in zip(times["torch"], times["own"]))
        flop = 2 * M * N * K
        rows.append({"product": name, "M": M, "N": N, "K": K, "a_transposed": a_t, "b_transposed": b_t,
                     "own_us": own * 1e6, "torch_mm_us": ref * 1e6, "own_gflops": flop / own / 1e9,
                     "torch_mm_gflops": flop / ref / 1e9, "torch_over_own_median_round": ratio})
        lines.append(f"{name:<30} {M:>5} {N:>5} {K:>5} {own * 1e6:>8.1f} {flop / own / 1e9:>8.1f} "
                     f"{ref * 1e6:>11.1f} {flop / ref / 1e9:>8.1f} {ratio:>8.2f}x")
    info = common.machine_info(torch.device("cpu"))
    head = [f"# bench_products.py: {info['cpu']}, torch {info['torch']}, 1 thread, commit {info['commit']}, "
            f"{info['date']}", f"# the kernels' product here: {info['cpu_gemm']}; best of {args.rounds} "
            "rounds per product, ratio = median over rounds", ""]
    text = "\n".join(head + lines) + "\n"
    out_dir = args.out or common.results_dir(torch.device("cpu"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_products.json"), "w") as f:
        json.dump({"machine": info, "rounds": args.rounds, "rows": rows}, f, indent=2)
    with open(os.path.join(out_dir, "bench_products.txt"), "w") as f:
        f.write(text)
    sys.stdout.write(text + f"written {out_dir}/bench_products.{{json,txt}}\n")


if __name__ == "__main__":
    main()
