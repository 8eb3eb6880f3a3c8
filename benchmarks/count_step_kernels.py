"""GPU kernels per CUDA training step, counted on the CPU (issue 10): the trainer's CUDA step
(`StaticStep.body`: `step_inputs_` + `train_step_` with dedup=False + the hidden copy and the loss
sum) run on the host emulation of our CUDA kernels (`torch.ops.gru4rec_emu`, CPU tensors), which
runs the very host code of the CUDA build: the same ATen calls (cuBLAS on a GPU) around the same
kernel launches.

The count is our kernels' launches (the emulation's counter) plus the ATen operations that do
device work (torch.profiler: the outermost ops that are not views, allocations or metadata),
each taken as one launch. That is an estimate of what a GPU runs, not a measurement: cuBLAS may split a
product in two kernels, `sort` runs two or three, and a contiguous copy is a memcpy rather than a
kernel. `bench_train.py --device cuda` measures the real count on a GPU (the H200's: 42 kernels
and 4 copies at rsc15, 49 and 4 at retailrocket, at d848fa8; 29 and 2, 34 and 1 at 68f0971, where
this script counted 27 and 29).

    PYTHONPATH=. python benchmarks/count_step_kernels.py [--preset rsc15 retailrocket] [--list]
"""
from __future__ import annotations

import argparse
import collections
import json

import torch

from gru4rec_ext.cli import resolve_config
from gru4rec_ext.train import Trainer
from gru4rec_ext.train_graph import EagerStandIn

# ATen ops that launch nothing on a GPU (views, allocations, metadata).
NO_WORK = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided", "aten::view", "aten::as_strided",
           "aten::narrow", "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::t",
           "aten::transpose", "aten::permute", "aten::expand", "aten::alias", "aten::detach", "aten::lift_fresh",
           "aten::_reshape_alias", "aten::reshape", "aten::resize_", "aten::set_", "aten::unbind", "aten::split",
           "aten::contiguous", "aten::is_nonzero", "aten::result_type", "aten::_unsafe_view", "aten::item",
           "aten::_local_scalar_dense", "aten::to", "aten::numpy_T", "aten::chunk", "aten::unflatten",
           "aten::resolve_conj", "aten::resolve_neg", "aten::conj", "aten::_conj", "aten::scalar_tensor",
           "aten::_has_compatible_shallow_copy_type", "aten::clone_if_needed"}


def make_static_trainer(preset: str, n_items: int) -> Trainer:
    """bench_train.py --device cuda's trainer of `preset`, on the CPU with the emulated CUDA step."""
    from bench_train_cuda import make_trainer, synthetic_sessions
    from gru4rec_ext import _cuda_emu  # noqa: F401 (registers torch.ops.gru4rec_emu)
    data = synthetic_sessions(n_items, 20_000, seed=0)
    trainer = make_trainer(resolve_config(preset), data, torch.device("cpu"), False, seed=0)
    trainer.static_step, trainer.cuda_graph = True, False
    trainer.step_ops = torch.ops.gru4rec_emu
    trainer.graph_backend = EagerStandIn()
    return trainer


def device_ops(prof) -> list[str]:
    """Names of the outermost profiled ATen ops that do device work, one launch each (the CPU
    runs some as several inner ops, such as `sum` as a fill and a reduction, which CUDA does in one
    kernel)."""
    work = []
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in NO_WORK:
            continue
        p, nested = e.cpu_parent, False
        while p is not None:
            if p.name.startswith("aten::") and p.name not in NO_WORK:
                nested = True
                break
            p = p.cpu_parent
        if not nested:
            work.append(e.name)
    return work


def count(preset: str, n_items: int) -> dict:
    from gru4rec_ext import _cuda_emu
    from torch.profiler import ProfilerActivity, profile
    trainer = make_static_trainer(preset, n_items)
    trainer.run_epoch(0, max_steps=2)  # binds the schedule, warms the sampler
    step = trainer.make_step()
    step.sampler.reserve(step.n_sample)
    before = _cuda_emu.launches()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.body()
    ours = _cuda_emu.launches() - before
    aten = device_ops(prof)
    return {"preset": preset, "our_kernels": ours, "aten_ops": len(aten), "estimate": ours + len(aten),
            "aten_by_name": dict(collections.Counter(aten).most_common())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", nargs="+", default=["rsc15", "retailrocket"])
    ap.add_argument("--items", type=int, default=3000, help="item count of the synthetic data (no effect on counts)")
    ap.add_argument("--list", action="store_true", help="print the ATen ops by name")
    ap.add_argument("--json", help="write the counts (with the machine and commit) here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [count(p, args.items) for p in args.preset]
    print(f"{'preset':<14}{'our kernels':>12}{'ATen ops':>10}{'estimate':>10}")
    for r in rows:
        print(f"{r['preset']:<14}{r['our_kernels']:>12}{r['aten_ops']:>10}{r['estimate']:>10}")
        if args.list:
            for name, n in r["aten_by_name"].items():
                print(f"    {n:>3}  {name}")
    if args.json:
        from common import machine_info
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(torch.device("cpu")), "presets": rows}, f, indent=1)


if __name__ == "__main__":
    main()
