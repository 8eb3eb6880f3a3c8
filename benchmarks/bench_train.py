"""Whole-training and evaluation speed: backend="kernels" vs backend="reference" side by side.

For each repeat, both backends (in alternating order) train the same fixed number of steps after a
warm-up, from the same initial weights and seed, then evaluate the test file. Reports the median
events/s (training pairs per second; test cases per second), their ratio, and the authors' CPU
figure from REFERENCE.md. Besides wall-clock events/s it reports events per CPU-second (process
time), which is far less sensitive to other jobs on a shared machine (exact with --threads 1). Writes benchmarks/results/<machine>/bench_train.json.

    PYTHONPATH=. python benchmarks/bench_train.py                 # rsc15_100k, rsc15 preset, 1500 steps
    PYTHONPATH=. python benchmarks/bench_train.py --threads 1 --steps 800 --repeat 3
    PYTHONPATH=. python benchmarks/bench_train.py --backends kernels kernels-blas reference
                                                  # our CPU products against torch's BLAS as well

With `--device cuda` it compares the CUDA step run eagerly against its CUDA graph instead, at the
rsc15 and retailrocket presets, with kernel launches per step; `--meta` times the host side of the
eager CUDA step without a GPU (benchmarks/bench_train_cuda.py, writes bench_train_cuda.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import bench_train_cuda  # noqa: E402
import common  # noqa: E402  (benchmarks/common.py: machine description, results folder)

from gru4rec_ext import _extension  # noqa: E402
from gru4rec_ext.cli import MODEL_KEYS, resolve_config  # noqa: E402
from gru4rec_ext.data import SessionData  # noqa: E402
from gru4rec_ext.evaluate import evaluate  # noqa: E402
from gru4rec_ext.model import GRU4Rec  # noqa: E402
from gru4rec_ext.train import Trainer  # noqa: E402

# The authors' implementation on the 2-core development CPU (REFERENCE.md), training events/s.
REFERENCE_CPU_EVENTS_PER_S = {"rsc15": 11_000, "diginetica": 5_100}


def run_backend(backend, cfg, train_data, test_data, args, device):
    """One timed training (and evaluation) of `backend`: "kernels", "reference", or "kernels-blas"
    (the kernels with torch's BLAS for the CPU products instead of the package's own)."""
    if backend == "kernels-blas":
        before = _extension.cpu_gemm()
        _extension.set_cpu_gemm("blas")
        try:
            return run_backend("kernels", cfg, train_data, test_data, args, device)
        finally:
            _extension.set_cpu_gemm(before)
    torch.manual_seed(args.seed)
    model = GRU4Rec(train_data.n_items, **{**{k: cfg[k] for k in MODEL_KEYS}, "backend": backend})
    trainer = Trainer(model, train_data, n_epochs=1, batch_size=cfg["batch_size"], n_sample=cfg["n_sample"],
                      sample_alpha=cfg["sample_alpha"], loss=cfg["loss"], bpreg=cfg["bpreg"], logq=cfg["logq"],
                      learning_rate=cfg["learning_rate"], momentum=cfg["momentum"], seed=args.seed, device=device,
                      progress=False)
    if args.no_fused_step:
        trainer.fused_step = False
    model.train()
    trainer.run_epoch(0, max_steps=args.warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    c0 = time.process_time()
    res = trainer.run_epoch(0, max_steps=args.steps)
    cpu = time.process_time() - c0
    out = {"train_events_per_s": res["events_per_s"], "train_seconds": res["seconds"], "steps": res["steps"],
           "train_cpu_seconds": cpu, "train_events_per_cpu_s": res["events"] / max(cpu, 1e-9), "loss": res["loss"]}
    if test_data is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        m = evaluate(model, test_data, batch_size=args.eval_batch_size, tie_modes=("standard",), device=device,
                     progress=False)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.update(eval_events_per_s=m["n_cases"] / sec, eval_seconds=sec, eval_events_per_cpu_s=m["n_cases"] / cpu,
                   recall20=m["standard"]["recall@20"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "data", "rsc15_100k", "train.tsv.xz"))
    p.add_argument("--test", default=os.path.join(ROOT, "data", "rsc15_100k", "test.tsv.xz"))
    p.add_argument("--preset", default="rsc15")
    p.add_argument("--steps", type=int, default=1500, help="timed training steps per backend")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--backends", nargs="+", default=["kernels", "reference"],
                   choices=["kernels", "reference", "kernels-blas"],
                   help="kernels-blas: the kernels with torch's BLAS products instead of ours (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fused-step", action="store_true",
                   help="kernels: run the step as the Python sequence of ops, not one gru4rec::train_step_ call")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<machine>)")
    p.add_argument("--meta", action="store_true",
                   help="time the host side of the eager CUDA step on meta tensors (no GPU needed)")
    p.add_argument("--presets", nargs="+", default=list(bench_train_cuda.PRESETS),
                   help="--device cuda / --meta: the presets to run (default: rsc15 retailrocket)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.meta or device.type == "cuda":
        return main_cuda(args, device)
    cfg = resolve_config(args.preset)
    train_data = SessionData.from_file(args.data)
    test_data = SessionData.from_file(args.test, train_data.item_map, drop_unknown=True) if args.test else None

    runs = {b: [] for b in args.backends}
    for r in range(args.repeat):
        order = args.backends if r % 2 == 0 else list(reversed(args.backends))
        for backend in order:
            runs[backend].append(run_backend(backend, cfg, train_data, test_data, args, device))

    def med(backend, key):
        vals = [x[key] for x in runs[backend] if key in x]
        return statistics.median(vals) if vals else None

    summary = {b: {k: med(b, k) for k in runs[b][0]} for b in args.backends}
    ref_cpu = REFERENCE_CPU_EVENTS_PER_S.get(args.preset)
    result = {"machine": common.machine_info(device),
              "data": args.data, "test": args.test, "preset": args.preset, "config": cfg, "steps": args.steps,
              "warmup": args.warmup, "repeat": args.repeat, "fused_step": not args.no_fused_step, "runs": runs,
              "median": summary,
              "authors_cpu_train_events_per_s": ref_cpu}
    def fmt(v):
        return "-" if v is None else format(v, ",.0f")

    lines = [f"{'backend':<12} {'train ev/s':>11} {'train ev/cpu-s':>15} {'eval ev/s':>11} {'eval ev/cpu-s':>14} "
             f"{'x authors CPU':>14}"]
    for b in args.backends:
        m = summary[b]
        tr = m["train_events_per_s"]
        lines.append(f"{b:<12} {fmt(tr):>11} {fmt(m['train_events_per_cpu_s']):>15} {fmt(m.get('eval_events_per_s')):>11} "
                     f"{fmt(m.get('eval_events_per_cpu_s')):>14} {(tr / ref_cpu) if ref_cpu else float('nan'):>14.2f}")
    if {"kernels", "reference"} <= set(args.backends):
        ratio = summary["kernels"]["train_events_per_s"] / summary["reference"]["train_events_per_s"]
        cpu_ratio = summary["kernels"]["train_events_per_cpu_s"] / summary["reference"]["train_events_per_cpu_s"]
        result["train_speedup_kernels_vs_reference"] = ratio
        result["train_cpu_speedup_kernels_vs_reference"] = cpu_ratio
        lines.append(f"training speed-up kernels/reference: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time; authors' "
                     f"CPU figure (REFERENCE.md): {ref_cpu:,} events/s")
    if {"kernels", "kernels-blas"} <= set(args.backends):
        ratio = summary["kernels"]["train_events_per_s"] / summary["kernels-blas"]["train_events_per_s"]
        cpu_ratio = summary["kernels"]["train_events_per_cpu_s"] / summary["kernels-blas"]["train_events_per_cpu_s"]
        result["train_speedup_own_products_vs_blas"] = ratio
        lines.append(f"training speed-up of the package's CPU products ({_extension.cpu_gemm()}) over torch's "
                     f"BLAS: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time")
    out_dir = args.out or common.results_dir(device)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "bench_train.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    sys.stdout.write("\n".join(lines) + f"\nwritten {path}\n")


def main_cuda(args, device):
    """--device cuda (eager against the graph) or --meta (host side only): bench_train_cuda.py."""
    if args.meta:
        runs = bench_train_cuda.run_meta(args)
        lines = bench_train_cuda.format_meta(runs)
        device = torch.device("cpu")
    else:
        runs = bench_train_cuda.run_cuda(args)
        lines = bench_train_cuda.format_cuda(runs)
    result = {"machine": common.machine_info(device), "mode": "meta" if args.meta else "cuda", "data": args.data,
              "steps": args.steps, "warmup": args.warmup, "presets": runs}
    out_dir = args.out or common.results_dir(device)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "bench_train_cuda.json" if not args.meta else "bench_train_meta.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    sys.stdout.write("\n".join(lines) + f"\nwritten {path}\n")


if __name__ == "__main__":
    main()
