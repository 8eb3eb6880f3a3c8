"""CPU benchmark of the sampled ranking loss: forward + backward, ours vs the unfused reference.

Side by side in one run, interleaved per repeat so machine noise hits every method alike, on a few
rotating input sets (hidden, targets, samples); the median of many repeats is reported.

  ref       autograd through the plain-PyTorch reference (gru4rec_ext.reference_loss)
  autograd  sampled_ranking_loss: the fused op with dense weight/bias gradients (index_add)
  pair      sampled_loss_forward + sampled_loss_backward: the trainer's row-sparse gradients

    PYTHONPATH=. python benchmarks/bench_loss_cpu.py [--repeats 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from gru4rec_ext import _extension
from gru4rec_ext.ops.sampled_loss import (sampled_loss_backward, sampled_loss_forward,
                                          sampled_ranking_loss)
from gru4rec_ext.reference_loss import sampled_ranking_loss_reference

CONFIGS = [(32, 2048, 100), (128, 2048, 512)]  # (B, K, H)
LOSSES = ["bpr-max", "cross-entropy"]
N_ITEMS = 40000
N_SETS = 3


def make_sets(B, K, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(N_ITEMS, H, generator=g) * 2 - 1) * (6 / (N_ITEMS + H)) ** 0.5 * 30
    bias = torch.randn(N_ITEMS, generator=g) * 0.01
    sets = []
    for _ in range(N_SETS):
        sets.append(dict(hidden=torch.randn(B, H, generator=g) * 0.5,
                         targets=torch.randint(0, N_ITEMS, (B,), generator=g),
                         samples=torch.randint(0, N_ITEMS, (K,), generator=g)))
    return weight, bias, sets


def run_ref(weight, bias, s, opts):
    params = [s["hidden"].requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
    out = sampled_ranking_loss_reference(*params, s["targets"], s["samples"], **opts)
    return torch.autograd.grad(out, params)


def run_autograd(weight, bias, s, opts):
    params = [s["hidden"].requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
    out = sampled_ranking_loss(*params, s["targets"], s["samples"], **opts)
    return torch.autograd.grad(out, params)


def run_pair(weight, bias, s, opts):
    with torch.no_grad():
        state = sampled_loss_forward(s["hidden"], weight, bias, s["targets"], s["samples"], **opts)
        return sampled_loss_backward(state)


METHODS = {"ref": run_ref, "autograd": run_autograd, "pair": run_pair}


def bench(B, K, H, loss, repeats):
    weight, bias, sets = make_sets(B, K, H)
    opts = dict(loss=loss, bpreg=1.0 if loss == "bpr-max" else 0.0)
    times = {name: [] for name in METHODS}
    for name, fn in METHODS.items():  # warm-up
        for s in sets:
            fn(weight, bias, s, opts)
    for i in range(repeats):
        s = sets[i % N_SETS]
        for name, fn in METHODS.items():
            t0 = time.perf_counter()
            fn(weight, bias, s, opts)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _extension.use_kernel("sampled_loss_forward", torch.device("cpu")):
        raise SystemExit("the extension is not built: build it first (see README)")
    print(f"sampled ranking loss, CPU, forward+backward, {torch.get_num_threads()} threads, "
          f"N={N_ITEMS}, median of {args.repeats} repeats over {N_SETS} rotating input sets")
    header = f"{'B':>4} {'K':>5} {'H':>4} {'loss':<14} {'ref ms':>8} {'autograd ms':>12} " \
             f"{'(x ref)':>8} {'pair ms':>8} {'(x ref)':>8}"
    print(header)
    print("-" * len(header))
    for B, K, H in CONFIGS:
        for loss in LOSSES:
            t = bench(B, K, H, loss, args.repeats)
            print(f"{B:>4} {K:>5} {H:>4} {loss:<14} {t['ref']:>8.2f} {t['autograd']:>12.2f} "
                  f"{t['ref'] / t['autograd']:>7.2f}x {t['pair']:>8.2f} {t['ref'] / t['pair']:>7.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
