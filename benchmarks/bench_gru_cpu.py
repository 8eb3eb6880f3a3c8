"""CPU benchmark of one GRU4Rec training step of the session GRU: ours vs the pure-PyTorch reference.

One step = T=1 forward + backward through autograd (dense input, E = H, resets at random rows),
at the sizes of the published presets (B=32/H=100 and B=80/H=224). Both implementations are
timed side by side in one run, rotating a few input sets, with torch.utils.benchmark's
blocked_autorange; the table gives median microseconds per step, the speed-up, our two ops called
without the autograd layer, and the time of the six matrix products of a step alone (the floor
both share: ref/GEMMs is the largest speed-up any implementation of the step could have here).

    PYTHONPATH=. python benchmarks/bench_gru_cpu.py [--threads 1] [--variants cudnn gru4rec]
"""
from __future__ import annotations

import argparse
import itertools

import torch
from torch.utils import benchmark

from gru4rec_ext import _extension
from gru4rec_ext.ops.session_gru import session_gru
from gru4rec_ext.reference import session_gru_reference

SIZES = [(32, 100), (80, 224)]


def input_sets(B, H, count=4, T=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(count):
        x = torch.randn(T, B, H, generator=gen, requires_grad=True)
        reset = torch.rand(T, B, generator=gen) < 0.1
        h0 = torch.randn(B, H, generator=gen, requires_grad=True)
        w = [torch.randn(3 * H, H, generator=gen).mul_(H ** -0.5).requires_grad_() for _ in range(2)]
        b = [torch.zeros(3 * H).requires_grad_() for _ in range(2)]
        sets.append((x, reset, h0, *w, *b))
    return sets


def make_gemm_floor(sets):
    """The six products of a T=1 step that both implementations must do (x W_ih^T, h W_hh^T;
    dX, dh, dW_ih, dW_hh), alone: a lower bound for either."""
    cycle = itertools.cycle([[t.detach() for t in s] for s in sets])

    def gemms():
        x, _, h0, w_ih, w_hh = next(cycle)[:5]
        x = x[0]
        gi, gh = x @ w_ih.t(), h0 @ w_hh.t()
        gi @ w_ih, gh @ w_hh, gi.t() @ x, gh.t() @ h0
    return gemms


def make_ops_only(sets, variant):
    """Our two ops called directly, without the autograd layer of torch.library (the same work as
    `ours`: every gradient, grad of out and h_n all ones): the rest of `ours` is that layer."""
    cycle = itertools.cycle([[t.detach() for t in s] for s in sets])
    fwd, bwd = torch.ops.gru4rec.session_gru_forward.default, torch.ops.gru4rec.session_gru_backward.default
    code = 0 if variant == "cudnn" else 1

    def ops():
        x, reset, h0, w_ih, w_hh, b_ih, b_hh = next(cycle)
        out, h_n, ws = fwd(x, reset, h0, w_ih, w_hh, b_ih, b_hh, code)
        bwd(torch.ones_like(out), torch.ones_like(h_n), x, reset, h0, w_ih, w_hh, b_ih, b_hh, out, ws, code, True,
            True)
    return ops


def make_step(fn, sets, variant):
    cycle = itertools.cycle(sets)

    def step():
        args = next(cycle)
        out, h_n = fn(*args, variant=variant)
        (out.sum() + h_n.sum()).backward()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--variants", nargs="+", default=["cudnn", "gru4rec"])
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternating rounds of ours/ref; the table shows the median round")
    args = parser.parse_args()
    if not _extension.available():
        raise SystemExit(f"gru4rec_ext._C is not built: {_extension._IMPORT_ERROR}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, T=1 forward+backward")
    print(f"{'variant':8s} {'B':>4s} {'H':>4s} {'ours us':>9s} {'ref us':>9s} {'speed-up':>9s} "
          f"{'ops only us':>12s} {'6 GEMMs us':>11s} {'ref/GEMMs':>10s}")
    for variant in args.variants:
        for B, H in SIZES:
            sets = input_sets(B, H)
            rounds = {"ours": [], "ref": [], "ops": [], "gemm": []}
            makers = {"ours": lambda: make_step(session_gru, sets, variant),
                      "ref": lambda: make_step(session_gru_reference, sets, variant),
                      "ops": lambda: make_ops_only(sets, variant), "gemm": lambda: make_gemm_floor(sets)}
            for _ in range(args.repeat):  # alternate, so that machine noise hits all alike
                for name, make in makers.items():
                    step = make()
                    for _ in range(20):  # warm-up
                        step()
                    timer = benchmark.Timer(stmt="step()", globals={"step": step},
                                            num_threads=torch.get_num_threads())
                    m = timer.blocked_autorange(min_run_time=args.min_run_time)
                    rounds[name].append(m.median * 1e6)
            times = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
            print(f"{variant:8s} {B:4d} {H:4d} {times['ours']:9.1f} {times['ref']:9.1f} "
                  f"{times['ref'] / times['ours']:8.2f}x {times['ops']:12.1f} {times['gemm']:11.1f} "
                  f"{times['ref'] / times['gemm']:9.2f}x")


if __name__ == "__main__":
    main()
