"""`gru4rec::train_step_`'s no-dedup mode (the CUDA mode: the B+K candidate columns scored as they
are, duplicates summed by the sparse updates; issue 10) against the CPU's dedup mode, on CPU
tensors with the CPU kernels. The same composition on the emulated CUDA kernels:
tests/test_emulated_step.py."""
import pytest
import torch

import gru4rec_ext._extension as ext

from step_cases import MODES, run_step, step_case

needs_step = pytest.mark.skipif(not ext.has_kernel("train_step_", "CPU"), reason="train_step_ CPU kernel not built")


@needs_step
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("loss", [4, 2])  # cross-entropy (log q), bpr-max
def test_no_dedup_step_equals_dedup_step(mode, tail, loss):
    """The CUDA mode's composition (dedup=False) trains to the CPU mode's weights and optimizer
    state up to float rounding: duplicates of a candidate, accidental hits, an input row that is
    also a candidate, a tail step whose dropped rows' targets are touched by no other column."""
    valid = torch.tensor([True, False, True, True, False, True]) if tail else None
    args = step_case(mode, valid, loss=loss)
    if tail:  # row 1's target only in row 1's column: must not be touched (momentum!)
        for ids in (args[0], args[1], args[4]):
            ids[ids == 29] = 28
        args[1][1] = 29
        args[1][4] = args[1][0]  # row 4's target is row 0's: updated through row 0's column
    a = run_step(args)
    b = run_step(args, dedup=False)
    assert torch.allclose(a[0], b[0], rtol=1e-5) and torch.allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    for ta, tb in zip(a[2], b[2]):
        for x, y in zip(ta, tb):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), (x - y).abs().max()
    if tail:
        for k in range(3):  # Wy, its acc and mom: row 29 untouched in both modes
            for got in (a[2], b[2]):
                assert torch.equal(got[k][0][29], args[8 + k][0][29])


@needs_step
def test_no_dedup_step_with_gathered_log_q_equals_tables():
    """log_q given (as step_inputs_ gathers it) is the same as gathering from the log tables."""
    args = step_case("shared", None)
    log_q = torch.cat([args[5][args[1]], args[6][args[4]]])
    a = run_step(args, dedup=False)
    b = run_step(args[:5] + [None, None] + args[7:], dedup=False, log_q=log_q)
    assert torch.equal(a[0], b[0])
    for ta, tb in zip(a[2], b[2]):
        assert all(torch.equal(x, y) for x, y in zip(ta, tb))


def update_ids(args):
    """The update rows as gru4rec::step_inputs_ writes them: targets and inputs with -1 for the rows
    that are not valid, the samples between."""
    inputs, targets, valid, samples = args[0], args[1], args[3], args[4]
    keep = valid if valid is not None else torch.ones_like(inputs, dtype=torch.bool)
    return torch.cat([torch.where(keep, targets, -1), samples, torch.where(keep, inputs, -1)])


@needs_step
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("ops_name", ["gru4rec", "gru4rec_emu"])
def test_no_dedup_step_with_update_ids_equals_building_them(mode, tail, ops_name):
    """update_ids given (as step_inputs_ writes them) updates exactly what the step's own
    where/cat of valid, targets, samples and inputs does, on the CPU kernels and the emulated
    CUDA ones; wrong sizes and dedup=True are refused."""
    if ops_name == "gru4rec_emu":
        emu = pytest.importorskip("gru4rec_ext._cuda_emu")
        del emu
    ops = getattr(torch.ops, ops_name)
    valid = torch.tensor([True, False, True, True, False, True]) if tail else None
    args = step_case(mode, valid, loss=2)
    a = run_step(args, ops, dedup=False)
    b = run_step(args, ops, dedup=False, update_ids=update_ids(args))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for ta, tb in zip(a[2], b[2]):
        assert all(torch.equal(x, y) for x, y in zip(ta, tb))
    with pytest.raises(RuntimeError, match="update_ids must be an int64"):
        run_step(args, ops, dedup=False, update_ids=update_ids(args)[1:])
    if ops_name == "gru4rec":
        with pytest.raises(RuntimeError, match="update_ids must be an int64"):
            run_step(args, ops, dedup=True, update_ids=update_ids(args))


@needs_step
def test_step_updates_in_place_and_dedup_errors():
    """The step writes every parameter and state tensor in place (the same data_ptr before and
    after: what a captured graph needs), in both modes."""
    args = step_case("embedding", torch.ones(6, dtype=torch.bool))
    for dedup in (True, False):
        before = [[t.data_ptr() for t in group] for group in args[8:14]]
        old = [[t.clone() for t in group] for group in args[8:14]]
        torch.ops.gru4rec.train_step_(*args, dedup=dedup)
        assert [[t.data_ptr() for t in group] for group in args[8:14]] == before
        assert not torch.equal(old[0][0], args[8][0])  # Wy changed, in place


@needs_step
@pytest.mark.parametrize("mode", list(MODES))
def test_meta_step_runs_the_composition(mode):
    """On meta tensors the op runs the CUDA mode's composition through the other ops' fake kernels
    (what tracing tools and the host-side timing of benchmarks/bench_train.py --meta use)."""
    def meta(a):
        if isinstance(a, torch.Tensor):
            return a.to("meta")
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            return [t.to("meta") for t in a]
        return a
    args = [meta(a) for a in step_case(mode, torch.ones(6, dtype=torch.bool))]
    loss, hidden = torch.ops.gru4rec.train_step_(*args)
    assert loss.device.type == "meta" and loss.shape == () and hidden.shape == (1, 6, 8)
    with pytest.raises(RuntimeError, match="dedup=True is CPU-only"):
        torch.ops.gru4rec.train_step_(*args, dedup=True)
