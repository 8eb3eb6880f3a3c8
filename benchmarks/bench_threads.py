"""CPU training speed by thread setting, quiet and with a competing busy process, beside the bound.

For each preset, in one run and on the same data, from the same initial weights:
  * `pool-1`, `pool-2`: the package's CPU path (the kernels' own threads, torch's ops on one
    thread) held at 1 and 2 threads (what `--threads 1` / `--threads 2` give);
  * `auto-2`: what a user gets without setting anything: 2 threads, or 1 for each stretch of steps
    where a probe measured one thread faster (gru4rec_ext.threads.StepThreads);
  * `omp-2`: the old way for comparison: torch's OpenMP threads (2) for the products and ATen ops,
    the kernels' own pool off;
  * each of them quiet and again while a competing process that this benchmark starts keeps a core
    busy (`--load loop`: one Python busy loop; `--load train`: a second 2-thread training of the same
    preset);
  * `products`: the step's matrix products alone (the GRU's and the output layer's, same shapes, one
    thread) as the kernels run them (the package's own AVX-512 product where it is chosen, see
    gru4rec_ext._extension.cpu_gemm), i.e. the time the step cannot go below; torch.mm's time for
    the same products is reported beside it.
Reports events/s (training pairs per second), events per CPU-second, and the ratios the issue asks
for: 2 threads / 1 thread (quiet), the default (auto-2) / 1 thread (quiet, and with load against 1
thread quiet and loaded), and the 1-thread step over its products. Writes benchmarks/results/<machine>/bench_threads.json and a plot.

    PYTHONPATH=. python benchmarks/bench_threads.py                       # all three presets
    PYTHONPATH=. python benchmarks/bench_threads.py --presets rsc15 --steps 400 --repeat 3
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import common  # noqa: E402

import importlib  # noqa: E402
from gru4rec_ext import _extension  # noqa: E402
from gru4rec_ext.cli import MODEL_KEYS, resolve_config  # noqa: E402
from gru4rec_ext.data import SessionData  # noqa: E402
from gru4rec_ext.model import GRU4Rec  # noqa: E402
from gru4rec_ext.train import Trainer  # noqa: E402

train_module = importlib.import_module("gru4rec_ext.train")  # the package exports a function of that name

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
# Preset -> training data. There is no RetailRocket data here: its preset runs on DIGINETICA, whose
# item count (43k) is of RetailRocket's size.
DATA = {
    "rsc15": os.path.join(ROOT, "data", "rsc15_100k", "train.tsv.xz"),
    "retailrocket": os.path.join(SHARED, "diginetica", "diginetica_train_full.tsv.xz"),
    "diginetica": os.path.join(SHARED, "diginetica", "diginetica_train_full.tsv.xz"),
}
MODES = ("pool-1", "pool-2", "auto-2", "omp-2")


@contextlib.contextmanager
def competitor(kind: str, preset: str, data: str):
    """A process competing for the cores while the block runs (None: nothing)."""
    if kind == "none":
        yield
        return
    if kind == "loop":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:  # a second training of the same preset, 2 threads
        cmd = [sys.executable, "-m", "gru4rec_ext", "-q", "--threads", "2", "train", data, "--preset", preset,
               "--n-epochs", "100"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": ROOT})
    try:
        time.sleep(3.0 if kind == "train" else 0.5)  # let it get going
        yield
    finally:
        proc.kill()
        proc.wait()


def make_trainer(cfg, data, seed):
    torch.manual_seed(seed)
    model = GRU4Rec(data.n_items, **{**{k: cfg[k] for k in MODEL_KEYS}, "backend": "kernels"})
    trainer = Trainer(model, data, n_epochs=1, batch_size=cfg["batch_size"], n_sample=cfg["n_sample"],
                      sample_alpha=cfg["sample_alpha"], loss=cfg["loss"], bpreg=cfg["bpreg"], logq=cfg["logq"],
                      learning_rate=cfg["learning_rate"], momentum=cfg["momentum"], seed=seed, progress=False)
    model.train()
    return trainer


def timed_steps(trainer, mode, steps, warmup):
    """Events/s and events/CPU-s of `steps` steps after `warmup`, with the thread setting `mode`."""
    n = int(mode.split("-")[1])
    torch.set_num_threads(n)
    trainer.adaptive_threads = mode.startswith("auto")  # pool-N: held at N threads
    saved = train_module.cpu_training_threads
    if mode.startswith("omp"):  # the old path: torch's OpenMP threads, the kernels' pool off
        train_module.cpu_training_threads = lambda: contextlib.nullcontext()
        _extension.set_num_threads(1)
    try:
        trainer.run_epoch(0, max_steps=warmup)
        c0 = time.process_time()
        res = trainer.run_epoch(0, max_steps=steps)
        cpu = time.process_time() - c0
    finally:
        train_module.cpu_training_threads = saved
    return {"events_per_s": res["events_per_s"], "events_per_cpu_s": res["events"] / max(cpu, 1e-9),
            "seconds": res["seconds"], "events": res["events"]}


# After a loaded run the package's pool still runs its jobs alone for up to 4096 of them (its
# back-off after stalls, csrc/cpu/thread_pool.cpp), about a second of training: the quiet runs
# that follow a loaded one start after this much untimed 2-thread training, so that they measure
# a quiet machine rather than the recovery from the load.
SETTLE_SECONDS = 2.0


def settle(trainer, seconds: float) -> None:
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainer.run_epoch(0, max_steps=20)


def mean_unique_candidates(trainer, steps=50) -> float:
    from gru4rec_ext.batching import build_schedule
    sched = build_schedule(trainer.data, trainer.batch_size, seed=trainer.seed, n_items=trainer.model.n_items)
    counts = []
    for s in range(min(steps, sched.inputs.shape[0])):
        cand = torch.cat([sched.targets[s], trainer.sampler.draw(trainer.n_sample)])
        counts.append(int(torch.unique(cand).numel()))
    return statistics.mean(counts)


def products_seconds(cfg, U: int, repeat: int, blas: bool = False) -> float:
    """One step's matrix products (shared-embedding cudnn GRU layers + output layer), 1 thread:
    as the kernels run them (the package's CPU product, csrc/products.h), or torch.mm's (blas)."""
    torch.set_num_threads(1)
    pool_before = _extension.get_num_threads()
    _extension.set_num_threads(1)
    product = (lambda o, a, b: torch.mm(a, b, out=o)) if blas else _extension._C._cpu_mm_out
    B, Hs = cfg["batch_size"], cfg["layers"]
    g = torch.Generator().manual_seed(0)
    pairs = []
    for i, H in enumerate(Hs):
        E = Hs[-1] if i == 0 else Hs[i - 1]  # shared embedding: the input is a Wy row
        w_ih, w_hh = torch.randn(3 * H, E, generator=g), torch.randn(3 * H, H, generator=g)
        x, h = torch.randn(B, E, generator=g), torch.randn(B, H, generator=g)
        dg = torch.randn(B, 3 * H, generator=g)
        pairs += [(x, w_ih.t()), (h, w_hh.t()), (dg, w_hh), (dg.t(), h), (dg.t(), x), (dg, w_ih)]
    H = Hs[-1]
    h, rows, G = torch.randn(B, H, generator=g), torch.randn(U, H, generator=g), torch.randn(B, U, generator=g)
    pairs += [(h, rows.t()), (G, rows), (G.t(), h)]
    outs = [torch.empty(a.shape[0], b.shape[1]) for a, b in pairs]

    def run():
        for (a, b), o in zip(pairs, outs):
            product(o, a, b)

    for _ in range(5):
        run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(20):
            run()
        times.append((time.perf_counter() - t0) / 20)
    _extension.set_num_threads(pool_before)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=list(DATA))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: about 2 s of work per run)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--load", choices=("loop", "train"), default="loop", help="the competing process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not _extension.available():
        sys.exit("bench_threads: the compiled extension is not built")
    torch_threads = torch.get_num_threads()
    default_steps = {"rsc15": 1500, "retailrocket": 400, "diginetica": 150}
    results, lines = {}, []
    for preset in args.presets:
        cfg = resolve_config(preset)
        data = SessionData.from_file(DATA[preset])
        steps = args.steps or default_steps.get(preset, 300)
        trainer = make_trainer(cfg, data, args.seed)
        U = round(mean_unique_candidates(trainer))
        runs = {f"{m}/{load}": [] for load in ("quiet", args.load) for m in MODES}
        for r in range(args.repeat):
            for load in ("quiet", args.load):
                with competitor("none" if load == "quiet" else load, preset, DATA[preset]):
                    if load == "quiet" and r > 0:
                        settle(trainer, SETTLE_SECONDS)
                    order = MODES if r % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        runs[f"{mode}/{load}"].append(timed_steps(trainer, mode, steps, args.warmup))
        med = {k: {f: statistics.median(x[f] for x in v) for f in ("events_per_s", "events_per_cpu_s")}
               for k, v in runs.items()}
        prod = products_seconds(cfg, U, max(5, args.repeat * 3))
        prod_blas = products_seconds(cfg, U, max(5, args.repeat * 3), blas=True)
        one = med["pool-1/quiet"]["events_per_s"]
        step_1t = cfg["batch_size"] / one
        res = {"config": cfg, "data": DATA[preset], "steps": steps, "unique_candidates": U, "runs": runs,
               "median": med, "products_seconds_1t": prod, "products_blas_seconds_1t": prod_blas,
               "cpu_gemm": _extension.cpu_gemm(), "step_seconds_1t": step_1t,
               "step_over_products_1t": step_1t / prod,
               "quiet_2t_over_1t": med["pool-2/quiet"]["events_per_s"] / one,
               "quiet_default_over_1t": med["auto-2/quiet"]["events_per_s"] / one,
               "loaded_2t_over_1t_loaded": med["pool-2/" + args.load]["events_per_s"]
               / med["pool-1/" + args.load]["events_per_s"],
               "loaded_default_over_1t_quiet": med["auto-2/" + args.load]["events_per_s"] / one,
               "loaded_default_over_1t_loaded": med["auto-2/" + args.load]["events_per_s"]
               / med["pool-1/" + args.load]["events_per_s"],
               "loaded_omp2_over_1t_loaded": med["omp-2/" + args.load]["events_per_s"]
               / med["pool-1/" + args.load]["events_per_s"]}
        results[preset] = res
        lines.append(f"\n{preset} (B={cfg['batch_size']}, H={cfg['layers'][-1]}, U={U} unique candidates, "
                     f"{steps} steps x {args.repeat}):")
        lines.append(f"  {'setting':<22} {'ev/s':>9} {'ev/cpu-s':>9}")
        for k in runs:
            lines.append(f"  {k:<22} {med[k]['events_per_s']:>9,.0f} {med[k]['events_per_cpu_s']:>9,.0f}")
        lines.append(f"  products alone, 1 thread ({_extension.cpu_gemm()}): {prod * 1e3:.3f} ms/step "
                     f"(torch.mm: {prod_blas * 1e3:.3f}); the 1-thread step {step_1t * 1e3:.3f} ms = "
                     f"{res['step_over_products_1t']:.2f}x its products")
        lines.append(f"  quiet 2 threads / 1 thread: {res['quiet_2t_over_1t']:.2f}x, default / 1 thread "
                     f"{res['quiet_default_over_1t']:.2f}x; with load ({args.load}): 2 threads / 1 thread loaded "
                     f"{res['loaded_2t_over_1t_loaded']:.2f}x, default / 1 thread loaded "
                     f"{res['loaded_default_over_1t_loaded']:.2f}x, "
                     f"default loaded / 1 thread quiet {res['loaded_default_over_1t_quiet']:.2f}x, "
                     f"old OpenMP 2 threads / 1 thread loaded {res['loaded_omp2_over_1t_loaded']:.2f}x")
    torch.set_num_threads(torch_threads)
    out = {"machine": common.machine_info(torch.device("cpu")), "load": args.load, "presets": results}
    out_dir = args.out or common.results_dir(torch.device("cpu"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"bench_threads_{args.load}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    plot(results, args.load, os.path.join(out_dir, f"bench_threads_{args.load}.png"))
    sys.stdout.write("\n".join(lines) + f"\nwritten {path}\n")


def plot(results: dict, load: str, path: str) -> None:
    """Events/s per preset and setting (log scale), with the 1-thread products bound as a bar."""
    presets = list(results)
    series = {k: [results[p]["median"][k]["events_per_s"] for p in presets] for k in results[presets[0]]["median"]}
    series["products alone, 1 thread"] = [results[p]["config"]["batch_size"] / results[p]["products_seconds_1t"]
                                          for p in presets]
    common.bar_plot(path, presets, series, f"CPU training events/s, quiet and with a competing process ({load}); "
                    f"{common.git_commit()}", "events/s")


if __name__ == "__main__":
    main()
