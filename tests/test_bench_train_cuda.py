"""benchmarks/bench_train.py's CUDA modes (issue 10): what runs without a GPU (the synthetic
sessions, the --meta host-side run, the clear error of --device cuda), not the timings."""
import json
import os
import sys

import pytest
import torch

import gru4rec_ext._extension as ext

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_train  # noqa: E402
import bench_train_cuda  # noqa: E402


def test_synthetic_sessions_cover_every_item():
    data = bench_train_cuda.synthetic_sessions(500, 5000, seed=1)
    assert data.n_items == 500
    assert (data.item_counts() > 0).all()
    assert 0 < data.n_pairs < 5000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_mode_without_a_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_train.main(["--device", "cuda", "--out", str(tmp_path)])


@pytest.mark.skipif(not ext.has_kernel("train_step_", "Meta"), reason="train_step_'s Meta kernel not built")
def test_meta_mode_runs(tmp_path):
    bench_train.main(["--meta", "--presets", "rsc15", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)])
    with open(tmp_path / "bench_train_meta.json") as f:
        result = json.load(f)
    r = result["presets"]["rsc15"]
    assert result["mode"] == "meta" and r["batch_size"] == 32 and r["host_events_per_s"] > 0


def test_emulated_cuda_step_kernel_count():
    """benchmarks/count_step_kernels.py on the emulated CUDA step: our kernels and the ATen ops
    that do device work, at the rsc15 preset's shapes. The bound is today's count (25: 8 of ours,
    17 ATen), so that a change that adds launches to the graph step shows up here."""
    if not ext.has_kernel("train_step_", "CPU"):
        pytest.skip("kernels not built")
    pytest.importorskip("gru4rec_ext._cuda_emu")
    import count_step_kernels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row = count_step_kernels.count("rsc15", 500)
    finally:
        torch.set_num_threads(threads)
    # step_inputs_, GRU fwd/bwd and bias sums, dropout, loss row pass, dense, pair
    assert row["our_kernels"] == 8
    assert row["estimate"] <= 25, row["aten_by_name"]
    for name in ("aten::where", "aten::cat", "aten::ones", "aten::zeros_like", "aten::ge_", "aten::sort"):
        assert name not in row["aten_by_name"], name
