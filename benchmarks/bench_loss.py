"""Fused sampled ranking loss vs the unfused PyTorch formulation (our reference), forward+backward.

Two comparisons, each side by side on the same inputs:
  rows:  gradients to the B+K gathered output rows (what training needs): our row-sparse op pair
         vs autograd through the unfused formulation on gathered leaf rows;
  dense: plain autograd with dense [N,H] gradients for weight and bias, ours vs unfused.
    python benchmarks/bench_loss.py                     # CPU grid
    python benchmarks/bench_loss.py --device cuda --grid full --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import os

import torch

import common  # noqa: E402
from gru4rec_ext.ops.sampled_loss import sampled_loss_backward, sampled_loss_forward, sampled_ranking_loss
from gru4rec_ext.reference_loss import sampled_ranking_loss_reference

# Options as in the published presets (cross-entropy with logq; bpr-max with elu-1 and bpreg).
LOSS_OPTIONS = {
    "bpr": dict(loss="bpr"),
    "top1": dict(loss="top1"),
    "bpr-max": dict(loss="bpr-max", activation="elu", elu_alpha=1.0, bpreg=0.9),
    "top1-max": dict(loss="top1-max"),
    "cross-entropy": dict(loss="cross-entropy", logq=1.0),
}


def _grid(name):
    main = ("bpr-max", "cross-entropy")
    if name == "tiny":
        return [(loss, 8, 16, 12) for loss in LOSS_OPTIONS]
    if name == "cpu":
        g = [(loss, 32, 2048, 100) for loss in LOSS_OPTIONS] + [(loss, 128, 2048, 512) for loss in main]
        g += [(loss, 32, k, 100) for loss in main for k in (0, 512, 8192)]
        return g
    g = [(loss, 80, 2048, 224) for loss in LOSS_OPTIONS]
    g += [(loss, b, k, h) for loss in main for b in (32, 128, 512) for k in (0, 512, 2048, 8192) for h in (100, 512)]
    return g


def make_sets(B, K, H, N, dtype, device, n_sets):
    sets = []
    counts = torch.randint(1, 1000, (N,), device=device).to(torch.float32)
    for _ in range(n_sets):
        hidden = (torch.randn(B, H, device=device) * 0.3).to(dtype)
        targets = torch.randint(0, N, (B,), device=device)
        samples = torch.randint(0, N, (K,), device=device)
        cand = torch.cat([targets, samples])
        log_q = torch.cat([counts[targets].log(), 0.5 * counts[samples].log()]).to(dtype)
        sets.append((hidden, targets, samples, log_q))
    return sets


def run(args):
    device = common.parse_device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    grid = _grid(args.grid if args.grid != "auto" else ("full" if device.type == "cuda" else "cpu"))
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        if dtype == torch.bfloat16 and device.type == "cpu":
            continue
        for loss, B, K, H in grid:
            N = args.items
            weight = (torch.randn(N, H, device=device) * 0.1).to(dtype)
            bias = (torch.randn(N, device=device) * 0.1).to(dtype)
            w_leaf = weight.clone().requires_grad_(True)
            b_leaf = bias.clone().requires_grad_(True)
            sets = make_sets(B, K, H, N, dtype, device, args.sets)
            opts = LOSS_OPTIONS[loss]
            ar_rows = torch.arange(B + K, device=device)

            def ours_rows(i):
                hidden, targets, samples, log_q = sets[i]
                state = sampled_loss_forward(hidden, weight, bias, targets, samples, log_q=log_q, **opts)
                return sampled_loss_backward(state)

            def ref_rows(i):
                hidden, targets, samples, log_q = sets[i]
                cand = torch.cat([targets, samples])
                h = hidden.detach().requires_grad_(True)
                wc = weight.index_select(0, cand).requires_grad_(True)
                bc = bias.index_select(0, cand).requires_grad_(True)
                loss_v = sampled_ranking_loss_reference(h, wc, bc, ar_rows[:B], ar_rows[B:], log_q=log_q, **opts)
                return torch.autograd.grad(loss_v, (h, wc, bc))

            def ours_dense(i):
                hidden, targets, samples, log_q = sets[i]
                h = hidden.detach().requires_grad_(True)
                loss_v = sampled_ranking_loss(h, w_leaf, b_leaf, targets, samples, log_q=log_q, **opts)
                return torch.autograd.grad(loss_v, (h, w_leaf, b_leaf))

            def ref_dense(i):
                hidden, targets, samples, log_q = sets[i]
                h = hidden.detach().requires_grad_(True)
                loss_v = sampled_ranking_loss_reference(h, w_leaf, b_leaf, targets, samples, log_q=log_q, **opts)
                return torch.autograd.grad(loss_v, (h, w_leaf, b_leaf))

            row = {"loss": loss, "B": B, "K": K, "H": H, "N": N, "dtype": dtype_name}
            for name, fn in (("ours_rows", ours_rows), ("ref_rows", ref_rows),
                             ("ours_dense", ours_dense), ("ref_dense", ref_dense)):
                row[f"{name}_s"] = common.median_time(fn, device, n_inputs=args.sets, min_time=args.min_time)
            row["x_rows"] = row["ref_rows_s"] / row["ours_rows_s"]
            row["x_dense"] = row["ref_dense_s"] / row["ours_dense_s"]
            row["ours_rows_steps/s"] = 1.0 / row["ours_rows_s"]
            rows.append(row)
            print(f"{loss:14s} B={B:4d} K={K:5d} H={H:4d} {dtype_name:8s} rows: ours {row['ours_rows_s']*1e3:8.3f} ms "
                  f"x{row['x_rows']:6.2f}   dense: ours {row['ours_dense_s']*1e3:8.3f} ms x{row['x_dense']:6.2f}",
                  flush=True)

    out_dir = common.results_dir(device, args.out)
    info = common.machine_info(device)
    common.write_json(os.path.join(out_dir, "bench_loss.json"), {"machine": info, "rows": rows})
    labels = [f"{r['loss']} B{r['B']} K{r['K']} H{r['H']} {r['dtype'][:4]}" for r in rows]
    common.bar_plot(os.path.join(out_dir, "bench_loss_speedup.png"), labels,
                    {"rows (training path)": [r["x_rows"] for r in rows],
                     "dense autograd": [r["x_dense"] for r in rows]},
                    f"fused loss fwd+bwd speed-up over unfused ({info.get('gpu', info['cpu'])}, {info['commit']})",
                    "x faster than unfused", log=False, hline=1.0)
    print(f"\nsampled loss fwd+bwd, {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
          f"{info['torch_threads']} threads, commit {info['commit']}, N={args.items}")
    print(common.format_table(rows, ["loss", "B", "K", "H", "dtype", "ours_rows_s", "ref_rows_s", "x_rows",
                                     "ours_dense_s", "ref_dense_s", "x_dense"]))
    print(f"results: {out_dir}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid", default="auto", choices=["auto", "cpu", "full", "tiny"])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--items", type=int, default=40000, help="N, items in the output table")
    p.add_argument("--sets", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None)
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
