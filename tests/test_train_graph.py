"""The CUDA training step and its CUDA graph (issue 10), tested on the CPU.

* `StaticStep` (the CUDA step: inputs read on the device through a device-side step counter,
  static buffers) on CPU tensors against the CPU trainer, its buffers in place from step to step,
  checkpoint and resume;
* `GraphRunner`'s capture / check / eager fallback through a CPU stand-in for the CUDA graph, with
  injected failures;
* on CUDA only (skipped here): the graph against the eager step, and the trainer end to end.

The step's no-dedup mode (CUDA's) is tested in tests/test_step_no_dedup.py, the emulated CUDA
kernels of the step in tests/test_emulated_step.py.
"""
import logging
import math

import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.train import Trainer
from gru4rec_ext.train_graph import EagerStandIn, GraphRunner

from step_cases import MODES
from train_helpers import rsc15_slice

STEP = ext.has_kernel("train_step_", "CPU") and ext.has_kernel("step_inputs_", "CPU")
needs_step = pytest.mark.skipif(not STEP, reason="train_step_ / step_inputs_ CPU kernels not built")
CUDA = torch.cuda.is_available() and ext.has_kernel("train_step_", "CUDA")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
_DATA = {}


def data():
    if "d" not in _DATA:
        _DATA["d"] = rsc15_slice(60, 10)
    return _DATA["d"]


def make_trainer(mode="shared", *, static=False, ops=None, graph=False, backend=None, seed=3, **kw):
    """A small trainer on the CPU; static: the CUDA step (StaticStep) with `ops` and `backend`."""
    train_data, _, item_map = data()
    torch.manual_seed(0)
    model = GRU4Rec(item_map.n_items, [16], dropout_p_hidden=0.2, backend="kernels", **MODES[mode])
    opts = dict(n_epochs=1, batch_size=8, n_sample=6, loss="cross-entropy", logq=1.0, momentum=0.2,
                learning_rate=0.1, progress=False, seed=seed)
    opts.update(kw)
    trainer = Trainer(model, train_data, **opts)
    if static:
        trainer.static_step, trainer.cuda_graph = True, graph
        trainer.step_ops = ops
        trainer.graph_backend = backend if backend is not None else EagerStandIn()
    return trainer


def weights(trainer):
    m = trainer.model
    out = {n: p.detach().clone() for n, p in m.named_parameters()}
    out.update({f"acc.{n}": t.clone() for n, t in trainer.optimizer.acc.items()})
    out.update({f"mom.{n}": t.clone() for n, t in trainer.optimizer.mom.items()})
    return out


def assert_close(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=atol), (k, (a[k] - b[k]).abs().max().item())


# ----- StaticStep (the CUDA step) on CPU tensors -----

@needs_step
@pytest.mark.parametrize("mode", list(MODES))
def test_static_step_trains_like_the_cpu_step(mode):
    """An epoch of the CUDA step (schedule rows through the device-side counter, samples through the
    sampler's offset, log q gathered by step_inputs_, dedup=False) on CPU tensors gives the CPU
    trainer's loss and weights up to float rounding (tail steps included)."""
    ref = make_trainer(mode)
    r = ref.run_epoch(0)
    got = make_trainer(mode, static=True)
    g = got.run_epoch(0)
    assert r["steps"] == g["steps"] and r["events"] == g["events"]
    assert math.isclose(r["loss"], g["loss"], rel_tol=1e-5)
    assert_close(weights(ref), weights(got))


@needs_step
def test_static_step_buffers_stay_in_place():
    """Every tensor the CUDA step reads or writes keeps its data_ptr from step to step and from
    epoch to epoch (a captured graph reads and writes them by address)."""
    trainer = make_trainer(static=True, n_epochs=2)
    step = trainer.make_step()
    tensors = lambda: [t for _, t in step.state()] + [step.inputs, step.candidates, step.reset, step.valid,  # noqa
                                                       step.log_q, trainer.sampler._cache, *step.schedule]
    trainer.run_epoch(0, max_steps=3)
    ptrs = [t.data_ptr() for t in tensors()]
    trainer.run_epoch(0, max_steps=5)
    trainer.run_epoch(1)
    assert [t.data_ptr() for t in tensors()] == ptrs
    assert trainer.make_step() is step


@needs_step
def test_static_step_resume_is_exact(tmp_path):
    """Checkpoint after epoch 1, resume, epoch 2: the weights of an uninterrupted 2-epoch run (the
    sampler's cache and offset, the RNG and the step counter restored or restarted as they were)."""
    full = make_trainer(static=True, n_epochs=2, checkpoint_dir=str(tmp_path / "a"))
    full.fit()
    first = make_trainer(static=True, n_epochs=1, checkpoint_dir=str(tmp_path / "b"))
    first.fit()
    resumed = make_trainer(static=True, n_epochs=2, checkpoint_dir=str(tmp_path / "b"), resume=True)
    resumed.fit()
    for k, v in weights(full).items():
        assert torch.equal(v, weights(resumed)[k]), k


# ----- GraphRunner: capture, check on the first replay, eager fallback -----

class FailingCapture(EagerStandIn):
    def capture(self, body):
        raise RuntimeError("operation not permitted when stream is capturing")


class WrongReplay(EagerStandIn):
    """A graph whose replay runs the step, then corrupts a weight (a wrongly captured step)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def capture(self, body):
        def replay():
            body()
            self.tensor.add_(1e-3)
        return replay


class RaisingReplay(EagerStandIn):
    def capture(self, body):
        def replay():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return replay


def _graph_warnings(caplog):
    return [r for r in caplog.records if "CUDA graph" in r.getMessage()]


@needs_step
def test_graph_runner_replays_after_a_checked_capture(caplog):
    """Warm-up eager, then capture, a checked first replay, replays: no warning, and the weights of
    the eager run."""
    eager = make_trainer(static=True, graph=False)
    eager.run_epoch(0)
    graph = make_trainer(static=True, graph=True)
    with caplog.at_level(logging.WARNING, logger="gru4rec_ext"):
        graph.run_epoch(0)
    runner = graph.make_step().runner
    assert runner.mode == "graph" and runner.fallback_reason is None and not _graph_warnings(caplog)
    assert eager.make_step().runner.mode == "eager"
    for k, v in weights(eager).items():
        assert torch.equal(v, weights(graph)[k]), k


@needs_step
@pytest.mark.parametrize("backend,why", [(FailingCapture, "the capture failed"),
                                         (WrongReplay, "disagrees with the eager step: Wy differs"),
                                         (RaisingReplay, "the replay failed")])
def test_graph_runner_falls_back_with_one_warning(caplog, backend, why):
    """A failed capture, a replay that disagrees with the eager step, or one that raises: one
    warning saying why, every step eager from then on, and the eager run's weights exactly (the
    wrong replay's results are thrown away)."""
    eager = make_trainer(static=True, graph=False, n_epochs=2)
    eager.run_epoch(0)
    eager.run_epoch(1)
    trainer = make_trainer(static=True, graph=True, n_epochs=2)
    trainer.graph_backend = backend(trainer.model.Wy.detach()) if backend is WrongReplay else backend()
    with caplog.at_level(logging.WARNING, logger="gru4rec_ext"):
        trainer.run_epoch(0)
        trainer.run_epoch(1)
    warnings = _graph_warnings(caplog)
    assert len(warnings) == 1 and why in warnings[0].getMessage(), [w.getMessage() for w in warnings]
    runner = trainer.make_step().runner
    assert runner.mode == "eager" and why in runner.fallback_reason
    for k, v in weights(eager).items():
        assert torch.equal(v, weights(trainer)[k]), k


def test_graph_runner_check_restores_state_and_rng():
    """The check runs the eager step and the replay from the same state and RNG state: a body that
    draws random numbers agrees with its replay, and the result is one step (not two)."""
    x = torch.zeros(3)
    counter = torch.zeros((), dtype=torch.int64)

    def body():
        x.add_(torch.rand(3))
        counter.add_(1)

    runner = GraphRunner(body, [("x", x), ("counter", counter)], EagerStandIn())
    torch.manual_seed(0)
    for _ in range(4):
        runner()
    assert runner.mode == "graph" and int(counter) == 4
    torch.manual_seed(0)
    expect = sum(torch.rand(3) for _ in range(4))
    assert torch.allclose(x, expect)


def test_cuda_graph_needs_cuda():
    train_data, _, item_map = data()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        Trainer(GRU4Rec(item_map.n_items, [8]), train_data, cuda_graph=True, device="cpu", progress=False)
    trainer = Trainer(GRU4Rec(item_map.n_items, [8]), train_data, device="cpu", progress=False)
    assert not trainer.static_step and not trainer.cuda_graph  # the CPU keeps its fused step


def test_cli_cuda_graph_flag():
    from gru4rec_ext.cli import build_parser
    p = build_parser()
    base = ["train", "x.tsv"]
    assert p.parse_args(base).cuda_graph is None
    assert p.parse_args(base + ["--cuda-graph"]).cuda_graph is True
    assert p.parse_args(base + ["--no-cuda-graph"]).cuda_graph is False


# ----- CUDA only (skipped without a GPU) -----

@needs_cuda
@pytest.mark.parametrize("mode", list(MODES))
def test_cuda_graph_step_equals_eager_step(mode):
    """On the GPU: the captured step replays to the eager step's weights, and the check passed."""
    results = []
    for graph in (False, True):
        trainer = make_trainer(mode, device="cuda", cuda_graph=graph)
        assert trainer.static_step and trainer.cuda_graph == graph
        trainer.run_epoch(0)
        assert trainer.make_step().runner.mode == ("graph" if graph else "eager")
        results.append(weights(trainer))
    assert_close(*results, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_cuda_static_step_trains_like_the_python_sequence():
    """On the GPU: the CUDA step (one train_step_ call, dedup=False) gives the weights of the
    trainer's Python sequence of ops on the same device (the same sampler and dropout generator)."""
    ref = make_trainer("shared", device="cuda", cuda_graph=False)
    ref.static_step = False  # TrainStep: the Python sequence of ops
    ref.run_epoch(0)
    got = make_trainer("shared", device="cuda", cuda_graph=False)
    assert got.static_step
    got.run_epoch(0)
    # Float32 rounding differs between the two (cuBLAS, duplicates summed in another order): on
    # an H200 one weight of magnitude 0.013 ended 1.8e-6 apart after the epoch.
    assert_close(weights(ref), weights(got), rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_graph_without_the_kernels_warns(caplog):
    train_data, _, item_map = data()
    model = GRU4Rec(item_map.n_items, [8], backend="reference")
    with caplog.at_level(logging.WARNING, logger="gru4rec_ext"):
        trainer = Trainer(model, train_data, device="cuda", cuda_graph=True, progress=False)
    assert not trainer.static_step and not trainer.cuda_graph
    assert any("cuda_graph=True needs backend='kernels'" in r.getMessage() for r in caplog.records)
