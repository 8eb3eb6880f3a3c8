"""CUDA training speed (issue 10): the eager step against the CUDA graph, with launches per step.

`bench_train.py --device cuda` runs this. For each preset (default: rsc15, B=32 H=100, on
rsc15_100k; retailrocket, B=80 H=224, on synthetic sessions over RETAILROCKET_ITEMS items, Zipf
popularity, as no RetailRocket file ships here) it trains the same steps with cuda_graph=False
(the StaticStep run eagerly: one step_inputs_ and one train_step_ call per step) and with
cuda_graph=True (one graph replay per step), and reports events/s and, from torch.profiler over
PROFILE_STEPS steps, per step: the GPU kernels, the memcpy/memset operations, and the host's launch
calls (cudaLaunchKernel and the like, cudaGraphLaunch, async memcpy/memset).

`--meta` (no GPU needed) times the host side of the eager CUDA step instead: `StaticStep.body`'s
two op calls on meta tensors of the preset's shapes, through the dispatcher, the C++ composition
and the ops' fake kernels, no real kernel. The GRU and loss fakes are Python functions, which the
CUDA kernels' host code is not, and so are many of ATen's meta kernels (torch._meta_registrations,
torch._refs), so this bounds the eager step's host cost from above, loosely.

    PYTHONPATH=. python benchmarks/bench_train.py --device cuda --steps 300
    PYTHONPATH=. python benchmarks/bench_train.py --meta
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from gru4rec_ext.cli import MODEL_KEYS, resolve_config
from gru4rec_ext.data import ItemMap, SessionData
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.train import Trainer
from gru4rec_ext.train_step import fused_step_args

PRESETS = ("rsc15", "retailrocket")
RETAILROCKET_ITEMS = 43_000  # about the item count of the authors' RetailRocket training set
PROFILE_STEPS = 20
_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                 "cudaMemcpyAsync", "cudaMemsetAsync")


def synthetic_sessions(n_items: int, n_events: int, seed: int = 0, mean_length: float = 6.0) -> SessionData:
    """Sessions of geometric lengths (>= 2) over `n_items` items with Zipf(1) popularity."""
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.geometric(1.0 / (mean_length - 1.0), size=n_events // 2)
    lengths = lengths[np.cumsum(lengths) <= n_events]
    p = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=int(lengths.sum()), p=p / p.sum())
    items[:n_items] = rng.permutation(n_items)[:min(n_items, items.size)]  # every item occurs
    sessions = np.repeat(np.arange(lengths.size), lengths)
    df = pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": np.arange(items.size)})
    return SessionData.from_events(df, ItemMap.fit(df["ItemId"]), name=f"synthetic {n_items} items")


def preset_data(preset: str, rsc15_path: str, steps: int) -> SessionData:
    if preset == "rsc15":
        return SessionData.from_file(rsc15_path)
    cfg = resolve_config(preset)
    return synthetic_sessions(RETAILROCKET_ITEMS, max(cfg["batch_size"] * steps * 2, 400_000))


def make_trainer(cfg: dict, data: SessionData, device, cuda_graph: bool, seed: int) -> Trainer:
    torch.manual_seed(seed)
    model = GRU4Rec(data.n_items, **{**{k: cfg[k] for k in MODEL_KEYS}, "backend": "kernels"})
    return Trainer(model, data, n_epochs=1, batch_size=cfg["batch_size"], n_sample=cfg["n_sample"],
                   sample_alpha=cfg["sample_alpha"], loss=cfg["loss"], bpreg=cfg["bpreg"], logq=cfg["logq"],
                   learning_rate=cfg["learning_rate"], momentum=cfg["momentum"], seed=seed, device=device,
                   progress=False, cuda_graph=cuda_graph)


def launches_per_step(step, n: int) -> dict:
    """torch.profiler over n more steps of a bound StaticStep: per step, GPU kernels, memcpy/memset
    operations, host launch calls, and each kernel's name with its count and GPU time per step (so
    that a GPU run shows where the step's time goes)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step.advance()
        torch.cuda.synchronize()
    kernels = copies = calls = 0
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            if e.name.startswith(("Memcpy", "Memset")):
                copies += 1
            else:
                kernels += 1
            us = float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0)
            entry = by_name.setdefault(e.name[:120], [0, 0.0])
            entry[0] += 1
            entry[1] += us
        elif e.name in _LAUNCH_CALLS:
            calls += 1
    table = sorted(({"name": k, "per_step": c / n, "us_per_step": t / n} for k, (c, t) in by_name.items()),
                   key=lambda r: -r["us_per_step"])
    return {"gpu_kernels": kernels / n, "gpu_copies": copies / n, "host_launch_calls": calls / n,
            "gpu_us_per_step": sum(r["us_per_step"] for r in table), "kernel_table": table}


def run_cuda(args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench_train.py --device cuda needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "use --meta to time the host side of the CUDA step without one")
    device = torch.device(args.device)
    out = {}
    for preset in args.presets:
        cfg = resolve_config(preset)
        data = preset_data(preset, args.data, args.warmup + args.steps + PROFILE_STEPS)
        out[preset] = {"batch_size": cfg["batch_size"], "layers": cfg["layers"], "n_sample": cfg["n_sample"],
                       "n_items": data.n_items, "data": data.name}
        for mode, graph in (("eager", False), ("graph", True)):
            trainer = make_trainer(cfg, data, device, graph, args.seed)
            step = trainer.make_step()
            trainer.run_epoch(0, max_steps=args.warmup)  # warm-up (and the capture, with the graph)
            res = trainer.run_epoch(0, max_steps=args.steps)  # ends with a host read: all work done
            runner = step.runner
            row = {"events_per_s": res["events_per_s"], "seconds": res["seconds"], "steps": res["steps"],
                   "runner_mode": runner.mode, "fallback_reason": runner.fallback_reason}
            row.update(launches_per_step(step, PROFILE_STEPS))
            out[preset][mode] = row
    return out


def _meta(t):
    if isinstance(t, torch.Tensor):
        return torch.empty_like(t, device="meta")
    if isinstance(t, list) and t and isinstance(t[0], torch.Tensor):
        return [_meta(x) for x in t]
    return t


def run_meta(args) -> dict:
    """Host seconds per eager CUDA step (StaticStep.body on meta tensors), per preset."""
    out = {}
    for preset in args.presets:
        cfg = resolve_config(preset)
        data = preset_data(preset, args.data, 0)
        n_items = data.n_items
        trainer = make_trainer(cfg, data, "cpu", None, args.seed)
        B, K = cfg["batch_size"], cfg["n_sample"]
        fused = [_meta(a) for a in fused_step_args(trainer.model, trainer.optimizer, trainer.output_loss,
                                                   cfg["learning_rate"], cfg["momentum"])]
        m = dict(device="meta")
        counter, offset = torch.zeros((), dtype=torch.int64, **m), torch.zeros((), dtype=torch.int64, **m)
        sched = (torch.empty(100, B, dtype=torch.int64, **m), torch.empty(100, B, dtype=torch.int64, **m),
                 torch.empty(100, B, dtype=torch.bool, **m), torch.empty(100, B, dtype=torch.bool, **m))
        cache = torch.empty(K * 256, dtype=torch.int64, **m)
        dtype = trainer.model.Wy.dtype
        lc = lw = torch.empty(n_items, dtype=dtype, **m) if cfg["logq"] > 0 else None
        inputs, candidates = torch.empty(B, dtype=torch.int64, **m), torch.empty(B + K, dtype=torch.int64, **m)
        reset, valid = torch.empty(B, dtype=torch.bool, **m), torch.empty(B, dtype=torch.bool, **m)
        log_q = torch.empty(B + K if lc is not None else 0, dtype=dtype, **m)
        hidden = torch.empty(len(cfg["layers"]), B, cfg["layers"][-1], dtype=dtype, **m)
        window = torch.zeros((), **m)
        ops = torch.ops.gru4rec

        def body():  # StaticStep.body on meta tensors
            ops.step_inputs_(counter, offset, *sched, cache, lc, lw, inputs, candidates, reset, valid, log_q)
            loss, h = ops.train_step_(inputs, candidates[:B], reset, valid, candidates[B:], None, None, hidden,
                                      *fused, dedup=False, log_q=log_q if lc is not None else None)
            hidden.copy_(h)
            window.add_(loss)

        for _ in range(args.warmup):
            body()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            body()
        sec = (time.perf_counter() - t0) / args.steps
        out[preset] = {"batch_size": B, "layers": cfg["layers"], "n_sample": K, "host_us_per_step": sec * 1e6,
                       "host_events_per_s": B / sec}
    return out


def format_cuda(result: dict) -> list[str]:
    lines = [f"{'preset':<13} {'mode':<6} {'ev/s':>11} {'kernels/step':>13} {'copies/step':>12} "
             f"{'launch calls/step':>18}  runner"]
    for preset, r in result.items():
        for mode in ("eager", "graph"):
            x = r[mode]
            why = f" ({x['fallback_reason']})" if x["fallback_reason"] else ""
            lines.append(f"{preset:<13} {mode:<6} {x['events_per_s']:>11,.0f} {x['gpu_kernels']:>13.1f} "
                         f"{x['gpu_copies']:>12.1f} {x['host_launch_calls']:>18.1f}  {x['runner_mode']}{why}")
        lines.append(f"{preset:<13} graph/eager: {r['graph']['events_per_s'] / r['eager']['events_per_s']:.2f}x")
    for preset, r in result.items():  # where the graph step's GPU time goes
        g = r["graph"]
        if "kernel_table" not in g:
            continue
        lines.append(f"{preset} graph step, GPU time by kernel ({g['gpu_us_per_step']:.1f} us/step in kernels "
                     f"and copies; wall {1e6 * r['batch_size'] / g['events_per_s']:.1f} us/step):")
        for k in g["kernel_table"]:
            lines.append(f"  {k['us_per_step']:>8.2f} us  x{k['per_step']:<4.1f} {k['name'][:100]}")
    return lines


def format_meta(result: dict) -> list[str]:
    lines = [f"{'preset':<13} {'host us/step':>13} {'host-side ev/s':>15}  (meta tensors: no kernel runs)"]
    for preset, r in result.items():
        lines.append(f"{preset:<13} {r['host_us_per_step']:>13.1f} {r['host_events_per_s']:>15,.0f}")
    return lines
