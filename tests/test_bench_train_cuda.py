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
