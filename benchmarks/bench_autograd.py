"""The drop-in modules against their own ops: SessionGRU and SampledRankingLoss with autograd.

CPU (default), side by side in one run, methods interleaved in every round so that machine noise
hits all alike; per method the median over blocks of calls of the wall time per call, beside the
process CPU time per call (events per CPU-second are far less sensitive to other jobs; exact with
--threads 1). Ratios are taken within each round, then the median over rounds.

  session GRU, one training step (T=1, dense input E=H, resets at random rows, input, h0 and every
  parameter requiring grad; grads set to None before each step, as a training loop does):
    module     SessionGRU(H, H)(x, reset, h0), then backward with gradients of ones for output
               and h_n
    ops        session_gru_forward + session_gru_backward called directly below autograd, as the
               trainer calls them, grads of ones: the same gradients without any autograd layer
    reference  the same SessionGRU with its GRU function swapped for session_gru_reference (what
               runs without the extension), then backward
    gemms      the six matrix products of the step alone (a floor for any implementation)
    backward() torch.autograd.backward of a one-node graph (a leaf times 1): the fixed cost of a
               backward() call (torch's Python entry and engine start), which a training step pays
               once for its whole model; `module` includes one
  sampled ranking loss, forward + backward:
    module     SampledRankingLoss(loss)(hidden, weight, bias, targets, samples).backward(): dense
               [N,H] and [N] gradients of the item table through the C++ autograd
    sparse     the same module with sparse_grad=True: sparse COO gradients of the B+K candidates'
               rows (no [N,H] buffer), as nn.Embedding(sparse=True) gives
    pair       sampled_loss_forward + sampled_loss_backward (row gradients, what the trainer uses)
    pair+dense the pair, then the dense gradients built from its rows (zeros + index_put): the
               work `module` does, without autograd
    zeros      a zero-filled [N,H] and [N] alone: what any dense gradient of the table costs beyond
               the pair (module/pair cannot go below (pair + zeros)/pair)

CUDA (--device cuda; for the H200 of benchmarks/gpu_check.sh): SessionGRU forward+backward and
forward only against cuDNN's nn.GRU (no resets: it has none) and an nn.GRUCell loop with reset
masking, at T=1 and T=20, with CUDA events.

    python benchmarks/bench_autograd.py [--threads 1] [--rounds 5] [--out DIR]
    python benchmarks/bench_autograd.py --device cuda --out DIR
--threads sets torch's intra-op threads and the compiled kernels' own pool alike (default 1).
Writes bench_autograd.json (and bench_autograd.txt, the printed tables) to
benchmarks/results/<machine>/ unless --out is given.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import time

import torch

import common  # noqa: E402  (sets sys.path to the checkout)
from gru4rec_ext import _extension, nn_gru
from gru4rec_ext.nn_gru import SessionGRU
from gru4rec_ext.nn_loss import SampledRankingLoss
from gru4rec_ext.ops.sampled_loss import sampled_loss_backward, sampled_loss_forward
from gru4rec_ext.reference import session_gru_reference

GRU_SIZES = [(32, 100), (80, 224)]           # (B, H), the published presets
LOSS_SIZES = [(32, 2048, 100, 40_000)]       # (B, K, H, N)
LOSSES = ["bpr-max", "cross-entropy"]
CUDA_GRID = [(t, b, h) for t in (1, 20) for b in (32, 80, 256) for h in (100, 224, 512)]
N_SETS = 3


# ---------------------------------------------------------------------------------------------
# timing

def time_per_call(fn, min_time: float, block: int) -> tuple[float, float]:
    """(median wall seconds per call over blocks of `block` calls, CPU seconds per call)."""
    walls, calls = [], 0
    c0, start = time.process_time(), time.perf_counter()
    while not walls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        for _ in range(block):
            fn()
        walls.append((time.perf_counter() - t0) / block)
        calls += block
    return statistics.median(walls), (time.process_time() - c0) / calls


def interleaved(makers: dict, rounds: int, min_time: float, block: int, warmup: int = 20):
    """Per method: wall and CPU seconds per call of every round (methods interleaved)."""
    out = {name: {"wall": [], "cpu": []} for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            fn = make()
            for _ in range(warmup):
                fn()
            wall, cpu = time_per_call(fn, min_time, block)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    return out


def summarise(times: dict, events: int, ratios: dict) -> dict:
    """Median µs per call, events/s and events per CPU-s per method; median per-round ratios."""
    row = {}
    for name, t in times.items():
        wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
        row[f"{name}_us"] = wall * 1e6
        row[f"{name}_cpu_us"] = cpu * 1e6
        row[f"{name}_ev/s"] = events / wall
        row[f"{name}_ev/cpu_s"] = events / cpu
    for label, (num, den) in ratios.items():
        per_round = [a / b for a, b in zip(times[num]["wall"], times[den]["wall"])]
        row[label] = statistics.median(per_round)
        row[label + " (cpu)"] = statistics.median(
            [a / b for a, b in zip(times[num]["cpu"], times[den]["cpu"])])
    return row


# ---------------------------------------------------------------------------------------------
# session GRU on the CPU

def gru_sets(B, H, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, B, H, generator=gen).requires_grad_(),
             torch.rand(1, B, generator=gen) < 0.1,
             torch.randn(1, B, H, generator=gen).requires_grad_()) for _ in range(N_SETS)]


@contextlib.contextmanager
def gru_function(fn):
    """SessionGRU with its GRU function swapped (the reference: what runs without the extension)."""
    saved = nn_gru.session_gru
    nn_gru.session_gru = fn
    try:
        yield
    finally:
        nn_gru.session_gru = saved


def gru_makers(B, H, variant):
    gru = SessionGRU(H, H, variant=variant)
    params = list(gru.parameters())
    sets = gru_sets(B, H)
    code = 0 if variant == "cudnn" else 1

    ones = (torch.ones(1, B, H), torch.ones(1, B, H))  # gradients of output and h_n, as for `ops`

    def module_step(cycle):
        def step():
            x, reset, h0 = next(cycle)
            for p in params + [x, h0]:
                p.grad = None
            torch.autograd.backward(gru(x, reset, h0), ones)
        return step

    def make_module():
        return module_step(itertools.cycle(sets))

    def make_reference():
        step = module_step(itertools.cycle(sets))

        def ref_step():
            with gru_function(session_gru_reference):
                step()
        return ref_step

    def make_ops():
        fwd = torch.ops.gru4rec.session_gru_forward.default
        bwd = torch.ops.gru4rec.session_gru_backward.default
        w = [p.detach() for p in params]
        cycle = itertools.cycle([(x.detach(), reset, h0.detach()[0]) for x, reset, h0 in sets])

        def step():
            x, reset, h0 = next(cycle)
            with torch._C._AutoDispatchBelowAutograd():  # as the trainer calls them
                out, h_n, ws = fwd(x, reset, h0, *w, code)
                bwd(ones[0], ones[1][0], x, reset, h0, *w, out, ws, code, True, True)
        return step

    def make_gemms():
        w_ih, w_hh = params[0].detach(), params[1].detach()
        cycle = itertools.cycle([(x.detach()[0], h0.detach()[0]) for x, _, h0 in sets])

        def step():
            x, h0 = next(cycle)
            gi, gh = x @ w_ih.t(), h0 @ w_hh.t()
            gi @ w_ih, gh @ w_hh, gi.t() @ x, gh.t() @ h0
        return step

    def make_backward_call():
        leaf = torch.zeros(1, requires_grad=True)
        one = torch.ones(1)

        def step():
            leaf.grad = None
            torch.autograd.backward((leaf * 1.0,), (one,))
        return step

    return {"module": make_module, "ops": make_ops, "reference": make_reference,
            "gemms": make_gemms, "backward()": make_backward_call}


def bench_gru_cpu(args):
    rows = []
    for variant in args.variants:
        for B, H in GRU_SIZES:
            times = interleaved(gru_makers(B, H, variant), args.rounds, args.min_time, block=20)
            row = {"variant": variant, "B": B, "H": H}
            row.update(summarise(times, B, {"module/ops": ("module", "ops"),
                                            "reference/module": ("reference", "module"),
                                            "reference/gemms": ("reference", "gemms")}))
            rows.append(row)
            print(f"  {variant:8s} B={B:3d} H={H:3d}  module {row['module_us']:8.1f} us  "
                  f"ops {row['ops_us']:8.1f} us  reference {row['reference_us']:8.1f} us  "
                  f"module/ops {row['module/ops']:.2f}x  reference/module "
                  f"{row['reference/module']:.2f}x", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# sampled ranking loss on the CPU

def loss_makers(B, K, H, N, loss):
    g = torch.Generator().manual_seed(1)
    weight = ((torch.rand(N, H, generator=g) * 2 - 1) * (6 / (N + H)) ** 0.5 * 30).requires_grad_()
    bias = (torch.randn(N, generator=g) * 0.01).requires_grad_()
    sets = [(torch.randn(B, H, generator=g).mul_(0.5).requires_grad_(),
             torch.randint(0, N, (B,), generator=g), torch.randint(0, N, (K,), generator=g))
            for _ in range(N_SETS)]
    opts = dict(loss=loss, bpreg=1.0 if loss == "bpr-max" else 0.0)
    modules = {sparse: SampledRankingLoss(loss, bpreg=opts["bpreg"], sparse_grad=sparse) for sparse in (False, True)}

    def make_module(sparse=False):
        cycle = itertools.cycle(sets)
        module = modules[sparse]

        def step():
            hidden, targets, samples = next(cycle)
            for p in (hidden, weight, bias):
                p.grad = None
            module(hidden, weight, bias, targets, samples).backward()
        return step

    def make_pair(dense=False):
        cycle = itertools.cycle([(h.detach(), t, s) for h, t, s in sets])
        w, b = weight.detach(), bias.detach()

        def step():
            hidden, targets, samples = next(cycle)
            state = sampled_loss_forward(hidden, w, b, targets, samples, **opts)
            g_h, cands, g_w, g_b = sampled_loss_backward(state)
            if dense:
                torch.zeros_like(w).index_put_((cands,), g_w, accumulate=True)
                torch.zeros_like(b).index_put_((cands,), g_b, accumulate=True)
        return step

    def make_zeros():
        def step():
            torch.zeros_like(weight), torch.zeros_like(bias)
        return step

    return {"module": make_module, "sparse": lambda: make_module(True), "pair": make_pair,
            "pair+dense": lambda: make_pair(True), "zeros": make_zeros}


def bench_loss_cpu(args):
    rows = []
    for (B, K, H, N), loss in itertools.product(LOSS_SIZES, LOSSES):
        times = interleaved(loss_makers(B, K, H, N, loss), args.rounds, args.min_time, block=10)
        row = {"loss": loss, "B": B, "K": K, "H": H, "N": N}
        row.update(summarise(times, B, {"module/pair": ("module", "pair"),
                                        "module/(pair+dense)": ("module", "pair+dense"),
                                        "sparse/pair": ("sparse", "pair")}))
        row["bound (pair+zeros)/pair"] = statistics.median(
            [(p + z) / p for p, z in zip(times["pair"]["wall"], times["zeros"]["wall"])])
        rows.append(row)
        print(f"  {loss:14s} B={B} K={K} H={H} N={N}  module {row['module_us']:8.1f} us  pair "
              f"{row['pair_us']:8.1f} us  pair+dense {row['pair+dense_us']:8.1f} us  module/pair "
              f"{row['module/pair']:.2f}x  module/(pair+dense) {row['module/(pair+dense)']:.2f}x  "
              f"sparse {row['sparse_us']:8.1f} us  sparse/pair {row['sparse/pair']:.2f}x",
              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# session GRU on CUDA (the H200 of gpu_check.sh)

def bench_gru_cuda(args, device):
    dtype = torch.float32
    rows = []
    for (T, B, H), backward in itertools.product(CUDA_GRID, (False, True)):
        gru_ref = torch.nn.GRU(H, H).to(device)
        ours = SessionGRU(H, H).to(device)
        ours.load_state_dict(gru_ref.state_dict())  # nn.GRU's parameter names and layout
        cell = torch.nn.GRUCell(H, H).to(device)
        cell.load_state_dict({k[:-3]: v for k, v in gru_ref.state_dict().items()})
        sets = [(torch.randn(T, B, H, device=device, dtype=dtype),
                 torch.rand(T, B, device=device) < 0.05,
                 torch.randn(1, B, H, device=device, dtype=dtype),
                 torch.randn(T, B, H, device=device, dtype=dtype)) for _ in range(N_SETS)]
        for p in itertools.chain(gru_ref.parameters(), ours.parameters(), cell.parameters()):
            p.requires_grad_(backward)

        def finish(out, grad):
            if backward:
                torch.autograd.backward([out], [grad])

        def module(i):
            x, reset, h0, grad = sets[i]
            finish(ours(x, reset, h0)[0], grad)

        def nn_gru(i):
            x, _, h0, grad = sets[i]
            finish(gru_ref(x, h0)[0], grad)

        def grucell_loop(i):
            x, reset, h0, grad = sets[i]
            h, outs, keep = h0[0], [], (~reset).to(dtype).unsqueeze(-1)
            for t in range(T):
                h = cell(x[t], h * keep[t])
                outs.append(h)
            finish(torch.stack(outs), grad)

        row = {"T": T, "B": B, "H": H, "pass": "fwd+bwd" if backward else "fwd"}
        for name, fn in (("module", module), ("nn_gru", nn_gru), ("grucell_loop", grucell_loop)):
            with torch.set_grad_enabled(backward):
                sec = common.median_time(fn, device, n_inputs=N_SETS, min_time=args.min_time)
            row[f"{name}_us"] = sec * 1e6
            row[f"{name}_ev/s"] = T * B / sec
        row["module/nn_gru"] = row["module_us"] / row["nn_gru_us"]
        row["grucell_loop/module"] = row["grucell_loop_us"] / row["module_us"]
        rows.append(row)
        print(f"  T={T:2d} B={B:3d} H={H:3d} {row['pass']:7s} module {row['module_us']:8.1f} us  "
              f"nn.GRU {row['nn_gru_us']:8.1f} us  GRUCell loop {row['grucell_loop_us']:8.1f} us",
              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of torch and of the kernels' pool (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (CPU)")
    p.add_argument("--min-time", type=float, default=0.4, help="seconds per measurement")
    p.add_argument("--variants", nargs="+", default=["cudnn", "gru4rec"])
    p.add_argument("--only", choices=["gru", "loss"], default=None, help="one part only (CPU)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<machine>)")
    args = p.parse_args(argv)
    if not _extension.available():
        raise SystemExit(f"gru4rec_ext._C is not built: {_extension._IMPORT_ERROR}")
    device = common.parse_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_autograd.py --device cuda: no CUDA device here "
                         "(torch.cuda.is_available() is False); the CUDA part needs a GPU")
    if device.type == "cuda" and not _extension.has_kernel("session_gru_forward", "CUDA"):
        raise SystemExit("bench_autograd.py --device cuda: gru4rec_ext._C was built without CUDA "
                         "kernels (build with FORCE_CUDA=1)")
    torch.set_num_threads(args.threads)
    _extension.set_num_threads(args.threads)
    info = common.machine_info(device)
    load_before = os.getloadavg()
    lines = [f"# bench_autograd.py {' '.join(argv) if argv else ''}".rstrip(),
             f"# {info.get('gpu', info['cpu'])}, torch {info['torch']}, {info['torch_threads']} "
             f"threads, commit {info['commit']}, {info['date']}",
             f"# load average before: {' '.join(f'{x:.2f}' for x in load_before)}"]
    print("\n".join(lines), flush=True)
    payload = {"machine": info, "load_average_before": load_before}
    tables = []
    if device.type == "cuda":
        rows = bench_gru_cuda(args, device)
        payload["gru_cuda"] = rows
        tables.append("SessionGRU vs nn.GRU (cuDNN, no resets) and an nn.GRUCell loop, float32\n" +
                      common.format_table(rows, ["T", "B", "H", "pass", "module_us", "nn_gru_us",
                                                 "grucell_loop_us", "module/nn_gru",
                                                 "grucell_loop/module"]))
    else:
        if args.only in (None, "gru"):
            rows = bench_gru_cpu(args)
            payload["gru_cpu"] = rows
            tables.append("SessionGRU, T=1 forward+backward (µs per step; events = B per step)\n" +
                          common.format_table(rows, [
                              "variant", "B", "H", "module_us", "ops_us", "reference_us",
                              "gemms_us", "backward()_us", "module/ops", "reference/module",
                              "reference/gemms",
                              "module_ev/s", "module_ev/cpu_s"]))
        if args.only in (None, "loss"):
            rows = bench_loss_cpu(args)
            payload["loss_cpu"] = rows
            tables.append("SampledRankingLoss forward+backward (µs per call; events = B)\n" +
                          common.format_table(rows, [
                              "loss", "B", "K", "H", "N", "module_us", "sparse_us", "pair_us",
                              "pair+dense_us", "zeros_us", "module/pair", "sparse/pair",
                              "module/(pair+dense)", "bound (pair+zeros)/pair", "module_ev/s",
                              "module_ev/cpu_s"]))
    payload["load_average_after"] = os.getloadavg()
    lines.append(f"# load average after: "
                 f"{' '.join(f'{x:.2f}' for x in payload['load_average_after'])}")
    text = "\n".join(lines + [""] + [t + "\n" for t in tables])
    print("\n" + "\n".join(tables))
    out_dir = common.results_dir(device, args.out)
    common.write_json(os.path.join(out_dir, "bench_autograd.json"), payload)
    with open(os.path.join(out_dir, "bench_autograd.txt"), "w") as f:
        f.write(text)
    print(f"results: {out_dir}")


if __name__ == "__main__":
    main()
