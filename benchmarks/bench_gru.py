"""Session GRU op vs torch.nn.GRU (cuDNN on GPU, no resets: the ceiling), an nn.GRUCell loop with
reset masking (what users write today) and our pure-PyTorch reference.

Events per second (T*B per call) for forward and forward+backward, side by side on the same inputs.
    python benchmarks/bench_gru.py                      # CPU grid, results to benchmarks/results/<machine>/
    python benchmarks/bench_gru.py --device cuda --grid full --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import itertools
import os

import torch

import common  # noqa: E402  (sets sys.path to the checkout)
from gru4rec_ext.ops.session_gru import session_gru
from gru4rec_ext.reference import session_gru_reference

GRIDS = {
    # (T, B, H) combinations; E = H (an embedding of the hidden size, as the shared-embedding presets).
    "cpu": [(t, b, h) for t in (1, 32) for h in (100, 224) for b in (32, 80)] + [(1, 256, 512), (1, 512, 1000)],
    "full": [(t, b, h) for t in (1, 32) for h in (100, 224, 512, 1000) for b in (32, 80, 256, 512)],
    "tiny": [(1, 32, 100), (4, 16, 40)],
}
METHODS = ("ours", "reference", "grucell_loop", "nn_gru")


def make_inputs(T, B, H, dtype, device, n_sets, p_reset=0.05):
    sets = []
    for _ in range(n_sets):
        x = torch.randn(T, B, H, device=device, dtype=dtype)
        reset = torch.rand(T, B, device=device) < p_reset
        h0 = torch.randn(B, H, device=device, dtype=dtype)
        grad = torch.randn(T, B, H, device=device, dtype=dtype)
        sets.append((x, reset, h0, grad))
    return sets


def make_runners(T, B, H, dtype, device, sets, backward):
    gru = torch.nn.GRU(H, H).to(device=device, dtype=dtype)
    cell = torch.nn.GRUCell(H, H).to(device=device, dtype=dtype)
    cell.load_state_dict({k[:-3]: v for k, v in gru.state_dict().items()})
    w = [p.detach().clone().requires_grad_(backward) for p in
         (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)]
    if not backward:
        for p in list(gru.parameters()) + list(cell.parameters()):
            p.requires_grad_(False)

    def finish(out, grad):
        if backward:
            torch.autograd.backward([out], [grad])

    def ours(i):
        x, reset, h0, grad = sets[i]
        out, _ = session_gru(x, reset, h0, *w, variant="cudnn")
        finish(out, grad)

    def reference(i):
        x, reset, h0, grad = sets[i]
        out, _ = session_gru_reference(x, reset, h0, *w, variant="cudnn")
        finish(out, grad)

    def grucell_loop(i):
        x, reset, h0, grad = sets[i]
        h, outs = h0, []
        keep = (~reset).to(dtype).unsqueeze(-1)
        for t in range(T):
            h = cell(x[t], h * keep[t])
            outs.append(h)
        finish(torch.stack(outs), grad)

    def nn_gru(i):
        x, _, h0, grad = sets[i]
        out, _ = gru(x, h0.unsqueeze(0))
        finish(out, grad)

    return {"ours": ours, "reference": reference, "grucell_loop": grucell_loop, "nn_gru": nn_gru}


def run(args):
    device = common.parse_device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    grid = GRIDS[args.grid if args.grid != "auto" else ("full" if device.type == "cuda" else "cpu")]
    dtypes = [getattr(torch, d) for d in args.dtypes]
    rows = []
    for (T, B, H), dtype, backward in itertools.product(grid, dtypes, (False, True)):
        if dtype == torch.bfloat16 and device.type == "cpu":
            continue
        sets = make_inputs(T, B, H, dtype, device, args.sets)
        runners = make_runners(T, B, H, dtype, device, sets, backward)
        row = {"T": T, "B": B, "H": H, "dtype": str(dtype).replace("torch.", ""),
               "pass": "fwd+bwd" if backward else "fwd"}
        for name in METHODS:
            with torch.set_grad_enabled(backward):
                sec = common.median_time(runners[name], device, n_inputs=args.sets, min_time=args.min_time)
            row[f"{name}_s"] = sec
            row[f"{name}_ev/s"] = T * B / sec
        row["x_vs_grucell"] = row["grucell_loop_s"] / row["ours_s"]
        row["x_vs_reference"] = row["reference_s"] / row["ours_s"]
        row["ours/nn_gru_time"] = row["ours_s"] / row["nn_gru_s"]
        rows.append(row)
        print(f"T={T:3d} B={B:4d} H={H:5d} {row['dtype']:8s} {row['pass']:8s} ours {row['ours_ev/s']:12.0f} ev/s  "
              f"x{row['x_vs_grucell']:6.2f} vs GRUCell loop  x{row['x_vs_reference']:6.2f} vs reference  "
              f"{row['ours/nn_gru_time']:6.2f}x nn.GRU time", flush=True)

    out_dir = common.results_dir(device, args.out)
    info = common.machine_info(device)
    common.write_json(os.path.join(out_dir, "bench_gru.json"), {"machine": info, "rows": rows})
    for mode in ("fwd", "fwd+bwd"):
        sel = [r for r in rows if r["pass"] == mode]
        labels = [f"T{r['T']} B{r['B']} H{r['H']} {r['dtype'][:4]}" for r in sel]
        common.bar_plot(os.path.join(out_dir, f"bench_gru_{mode.replace('+', '_')}.png"), labels,
                        {m: [r[f"{m}_ev/s"] for r in sel] for m in METHODS},
                        f"session GRU {mode}, events/s ({info.get('gpu', info['cpu'])}, {info['commit']})",
                        "events / s")
    print(f"\nsession GRU, {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
          f"{info['torch_threads']} threads, commit {info['commit']}")
    print(common.format_table(rows, ["T", "B", "H", "dtype", "pass", "ours_ev/s", "x_vs_grucell",
                                     "x_vs_reference", "ours/nn_gru_time"]))
    print(f"results: {out_dir}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--grid", default="auto", choices=["auto", *GRIDS])
    p.add_argument("--dtypes", nargs="+", default=["float32"], help="float32 and/or bfloat16 (GPU)")
    p.add_argument("--sets", type=int, default=3, help="input sets rotated between calls")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<machine>)")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
