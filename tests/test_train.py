"""Training: Adagrad-momentum (SPEC section 5), the popularity sampler (section 4), end-to-end runs."""
import math

import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.optim import AdagradM, dense_adagrad_update_, sparse_adagrad_update_
from gru4rec_ext.sampling import PopularitySampler
from gru4rec_ext.train import Trainer, train

from train_helpers import rsc15_slice


def adagrad_reference(p, acc, mom, g, lr, mu, eps=1e-6):
    """SPEC section 5 on dense tensors (rows with g = 0 are untouched for the sparse comparison)."""
    acc = acc + g * g
    step = g / torch.sqrt(acc + eps)
    if mu > 0:
        mom = mu * mom - lr * step
        return p + mom, acc, mom
    return p - lr * step, acc, mom


SPARSE_IMPLS = ["torch", pytest.param("kernel", marks=pytest.mark.skipif(
    not ext.has_kernel("sparse_adagrad_", "CPU"), reason="sparse_adagrad_ kernel not built"))]


@pytest.mark.parametrize("impl", SPARSE_IMPLS)
@pytest.mark.parametrize("mu", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(20, 5), (20,)])
def test_sparse_update_equals_dense_reference(impl, mu, shape):
    torch.manual_seed(0)
    p = torch.randn(shape)
    acc = torch.rand(shape)
    mom = torch.randn(shape) if mu > 0 else None
    idx = torch.tensor([3, 7, 3, 0, 19, 7, 3])  # duplicates: summed, each row updated once
    rows = torch.randn((len(idx),) + shape[1:])
    dense_g = torch.zeros(shape).index_add_(0, idx, rows)
    touched = torch.zeros(shape[0], dtype=torch.bool)
    touched[idx] = True
    exp_p, exp_acc, exp_mom = adagrad_reference(p, acc, mom if mom is not None else torch.zeros(shape), dense_g, 0.1, mu)
    got_p, got_acc, got_mom = p.clone(), acc.clone(), mom.clone() if mom is not None else None
    sparse_adagrad_update_(got_p, got_acc, got_mom, torch.zeros(shape), idx, rows, 0.1, mu,
                           use_kernel=impl == "kernel")
    assert torch.allclose(got_p[touched], exp_p[touched], atol=1e-6)
    assert torch.allclose(got_acc[touched], exp_acc[touched], atol=1e-6)
    assert torch.equal(got_p[~touched], p[~touched]) and torch.equal(got_acc[~touched], acc[~touched])
    if mu > 0:
        assert torch.allclose(got_mom[touched], exp_mom[touched], atol=1e-6)
        assert torch.equal(got_mom[~touched], mom[~touched])


DENSE_IMPLS = [False, pytest.param(None, marks=pytest.mark.skipif(
    not ext.has_kernel("dense_adagrad_", "CPU"), reason="dense_adagrad_ kernel not built"))]


@pytest.mark.parametrize("kernel", DENSE_IMPLS)
@pytest.mark.parametrize("mu", [0.0, 0.2])
def test_dense_update_and_optimizer_state(mu, kernel):
    torch.manual_seed(1)
    w = torch.randn(4, 3)
    opt = AdagradM({"w": w}, {}, lr=0.05, momentum=mu, sparse_kernel=kernel)
    p, acc, mom = w.clone(), torch.zeros(4, 3), torch.zeros(4, 3)
    for _ in range(3):
        g = torch.randn(4, 3)
        opt.step_dense([g])
        p, acc, mom = adagrad_reference(p, acc, mom, g, 0.05, mu)
    assert torch.allclose(w, p, atol=1e-6) and torch.allclose(opt.acc["w"], acc, atol=1e-6)
    state = opt.state_dict()
    opt2 = AdagradM({"w": w.clone()}, {}, lr=0.05, momentum=mu)
    opt2.load_state_dict(state)
    assert torch.equal(opt2.acc["w"], opt.acc["w"])
    with pytest.raises(ValueError, match="momentum"):
        AdagradM({"w": w}, {}, lr=0.1, momentum=1.5)


def test_sampler_follows_count_power_alpha():
    counts = torch.tensor([1, 4, 9, 16, 100, 0, 25])
    s = PopularitySampler(counts, 0.5, "cpu", block_size=50_000, seed=0)
    draws = torch.cat([s.draw(2048) for _ in range(100)])  # several refills
    freq = torch.bincount(draws, minlength=7).double() / draws.numel()
    expect = counts.double().sqrt()
    expect /= expect.sum()
    assert freq[5] == 0  # count 0 is never drawn
    assert torch.allclose(freq, expect, atol=0.005)
    assert torch.allclose(s.probabilities(), expect, atol=1e-9)


def test_sampler_seeded_and_log_q():
    counts = torch.arange(1, 11)
    a = PopularitySampler(counts, 0.3, "cpu", block_size=100, seed=5)
    b = PopularitySampler(counts, 0.3, "cpu", block_size=100, seed=5)
    assert all(torch.equal(a.draw(30), b.draw(30)) for _ in range(10))
    t, smp = torch.tensor([0, 9]), torch.tensor([1, 4])
    lq = a.log_q(t, smp)
    expect = torch.tensor([math.log(1), math.log(10), 0.3 * math.log(2), 0.3 * math.log(5)])
    assert torch.allclose(lq, expect.float(), atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        PopularitySampler(counts, 1.5, "cpu")


def test_sampler_step_reads_a_device_side_offset():
    """The step's samples come from a static buffer filled at a device-side offset: replaying only
    the device part (`take`, as a captured CUDA graph would) after the host's `reserve` yields the
    next samples each time, in the same buffer; the sequence is the alias-method draw of the
    sampler's generator (as before), across in-place refills of the cache, and survives a
    state_dict round trip."""
    counts = torch.arange(1, 21)
    s = PopularitySampler(counts, 0.5, "cpu", block_size=25, seed=4)
    ref = torch.Generator().manual_seed(4)
    prob, alias = s._prob, s._alias
    expect = []
    for _ in range(3):  # three blocks of 25, drawn as the sampler always drew them
        idx = torch.randint(0, 20, (25,), generator=ref)
        u = torch.rand(25, generator=ref)
        expect.append(torch.where(u < prob[idx], idx, alias[idx]))
    s.reserve(10)
    buf = s.take(10)
    cache_ptr = s._cache.data_ptr()
    assert torch.equal(buf, expect[0][:10])
    got = []
    for i in range(5):  # 2 per block: the host refills between, the buffer is read in place
        s.reserve(10)
        out = s.take(10)
        assert out is buf
        got.append(out.clone())
        if i == 2:
            state = s.state_dict()
    assert s._cache.data_ptr() == cache_ptr  # refilled in place
    assert torch.equal(got[0], expect[0][10:20]) and torch.equal(got[1], expect[1][:10])
    assert torch.equal(got[2], expect[1][10:20]) and torch.equal(got[3], expect[2][:10])
    resumed = PopularitySampler(counts, 0.5, "cpu", block_size=25, seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.draw(10), got[3]) and torch.equal(resumed.draw(10), got[4])


def test_sampler_views_and_device_offset_share_one_sequence():
    """The CPU step's `take_view` (a view of the cache, no device ops) and `take` (the device
    offset) hand out one sequence in any mix, across refills; `sync_offset` brings the device
    offset to the host's position for a step that reads it itself (StaticStep)."""
    counts = torch.arange(1, 31)
    ref = PopularitySampler(counts, 0.4, "cpu", block_size=25, seed=7)
    s = PopularitySampler(counts, 0.4, "cpu", block_size=25, seed=7)
    for i in range(12):
        expected = ref.draw(10)
        s.reserve(10)
        got = s.take_view(10) if i % 3 else s.take(10)
        assert torch.equal(got, expected)
    s.reserve(10)
    s.sync_offset(10)
    assert int(s._offset) == s._pos - 10
    assert torch.equal(s._cache[int(s._offset):int(s._offset) + 10], ref.draw(10))


@pytest.fixture(scope="module")
def small():
    return rsc15_slice(1500, 300)


def _model(n_items, seed=0, **kw):
    torch.manual_seed(seed)
    return GRU4Rec(n_items, [32], dropout_p_hidden=0.2, **kw)


TRAIN_KW = dict(batch_size=32, n_sample=128, sample_alpha=0.5, loss="cross-entropy", logq=1.0, learning_rate=0.1,
                momentum=0.1, progress=False)


def test_training_improves_recall(small):
    from gru4rec_ext.evaluate import evaluate
    train_data, test_data, item_map = small
    model = _model(item_map.n_items)
    before = evaluate(model.eval(), test_data, progress=False)["standard"]["recall@20"]
    summary = train(model, train_data, n_epochs=2, eval_data=test_data, seed=1, **TRAIN_KW)
    after = summary["metrics"]["standard"]["recall@20"]
    assert len(summary["epochs"]) == 2 and summary["epochs"][1]["loss"] < summary["epochs"][0]["loss"]
    assert after > before + 0.05, (before, after)


def test_training_reproducible_with_seed(small):
    train_data, _, item_map = small
    states = []
    for _ in range(2):
        model = _model(item_map.n_items)
        train(model, train_data, n_epochs=1, seed=7, **TRAIN_KW)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    other = _model(item_map.n_items)
    train(other, train_data, n_epochs=1, seed=8, **TRAIN_KW)
    assert not torch.equal(other.Wy, states[0]["Wy"])


def test_bpr_max_elu_separate_embedding_trains(small):
    train_data, _, item_map = small
    model = _model(item_map.n_items, constrained_embedding=False, embedding=16, final_activation="elu-1",
                   dropout_p_embed=0.2)
    s = train(model, train_data, n_epochs=1, seed=0, **{**TRAIN_KW, "loss": "bpr-max", "logq": 0.0, "bpreg": 0.9})
    assert math.isfinite(s["epochs"][0]["loss"])


def test_trainer_argument_errors(small):
    train_data, _, item_map = small
    model = _model(item_map.n_items)
    with pytest.raises(ValueError, match="loss"):
        Trainer(model, train_data, loss="hinge")
    with pytest.raises(ValueError, match="logq"):
        Trainer(model, train_data, loss="bpr-max", logq=1.0)
    with pytest.raises(ValueError, match="elu_param"):
        Trainer(model, train_data, elu_param=1.0)
    with pytest.raises(ValueError, match="items"):
        Trainer(GRU4Rec(item_map.n_items + 1, [8]), train_data)


def test_log_json(small, tmp_path):
    import json
    train_data, test_data, item_map = small
    out = tmp_path / "log.json"
    train(_model(item_map.n_items), train_data, n_epochs=1, eval_data=test_data, log_json=str(out), seed=0, **TRAIN_KW)
    log = json.loads(out.read_text())
    assert log["epochs"][0]["events_per_s"] > 0 and "recall@20" in log["metrics"]["standard"]


CUDA = torch.cuda.is_available()


@pytest.mark.skipif(not CUDA or not ext.has_kernel("sparse_adagrad_", "CUDA"), reason="no CUDA device or kernel")
@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_sparse_update_cuda_equals_cpu(mu):
    torch.manual_seed(0)
    n, d, m = 500, 33, 3000  # many duplicates
    p, acc, mom = torch.randn(n, d), torch.rand(n, d), torch.randn(n, d)
    idx, rows = torch.randint(0, n, (m,)), torch.randn(m, d)
    cpu = [t.clone() for t in (p, acc, mom)]
    sparse_adagrad_update_(*cpu, torch.zeros(n, d), idx, rows, 0.1, mu, use_kernel=False)
    gpu = [t.cuda() for t in (p, acc, mom)]
    sparse_adagrad_update_(*gpu, torch.zeros(n, d, device="cuda"), idx.cuda(), rows.cuda(), 0.1, mu, use_kernel=True)
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b.cpu(), atol=1e-5)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_training_on_cuda_improves_recall(small):
    from gru4rec_ext.evaluate import evaluate
    train_data, test_data, item_map = small
    model = _model(item_map.n_items).cuda()
    before = evaluate(model.eval(), test_data, progress=False)["standard"]["recall@20"]
    summary = train(model, train_data, n_epochs=2, eval_data=test_data, seed=1, device="cuda", **TRAIN_KW)
    assert summary["metrics"]["standard"]["recall@20"] > before + 0.05


FUSED = pytest.mark.skipif(not ext.has_kernel("train_step_", "CPU"), reason="train_step_ kernel not built")


@FUSED
@pytest.mark.parametrize("cfg", [
    dict(loss="cross-entropy", logq=1.0, momentum=0.2, learning_rate=0.2),
    dict(loss="bpr-max", bpreg=0.5, momentum=0.0, learning_rate=0.05, final_activation="elu-0.5",
         dropout_p_embed=0.2),
    dict(loss="top1-max", constrained_embedding=False, embedding=24, layers=[32, 32], dropout_p_embed=0.25,
         momentum=0.1, learning_rate=0.05, mask_accidental_hits=True),
    dict(loss="bpr", constrained_embedding=False, layers=[32], momentum=0.1, learning_rate=0.05,
         final_activation="tanh"),
    dict(loss="top1", layers=[32], momentum=0.0, learning_rate=0.05, variant="gru4rec"),
], ids=["xe-shared", "bprmax-elu", "top1max-embedding-2layers", "bpr-onehot", "top1-gru4rec-variant"])
def test_fused_step_equals_python_sequence(cfg):
    """gru4rec::train_step_ trains to the same weights, bit for bit, as the trainer's sequence of ops,
    over a whole epoch of a small slice (so the tail steps with masked rows are included)."""
    train_data, _, item_map = rsc15_slice(60, 10)
    model_keys = ("layers", "constrained_embedding", "embedding", "dropout_p_embed", "final_activation", "variant")
    mkw = {k: cfg.pop(k) for k in model_keys if k in cfg}
    states, losses = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GRU4Rec(item_map.n_items, mkw.get("layers", [32]), dropout_p_hidden=0.3, backend="kernels",
                        **{k: v for k, v in mkw.items() if k != "layers"})
        trainer = Trainer(model, train_data, n_epochs=1, batch_size=8, n_sample=40, progress=False, seed=3, **cfg)
        assert trainer.fused_step
        trainer.fused_step = fused
        losses.append(trainer.run_epoch(0)["loss"])
        states.append(model.state_dict())
    assert losses[0] == losses[1]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@FUSED
def test_fused_step_errors():
    args = dict(variants=[0], input_mode=5, dropout_embed=0.0, dropout_hidden=0.0, loss=4, activation=0,
                elu_alpha=1.0, bpreg=0.0, logq=0.0, mask_hits=False, lr=0.1, momentum=0.0, eps=1e-6)
    w = [torch.zeros(4, 2), torch.zeros(4)]
    gru = [torch.zeros(6, 2), torch.zeros(6, 2), torch.zeros(6), torch.zeros(6)]
    ids = torch.tensor([0, 1])
    call = lambda **over: torch.ops.gru4rec.train_step_(
        ids, ids, torch.zeros(2, dtype=torch.bool), None, ids, None, None, torch.zeros(1, 2, 2), w,
        [torch.zeros_like(t) for t in w], [], gru, [torch.zeros_like(t) for t in gru], [], **{**args, **over})
    with pytest.raises(RuntimeError, match="unknown input_mode 5"):
        call()
    with pytest.raises(RuntimeError, match="4 tensors per layer \\(2 layers\\)"):
        call(input_mode=0, variants=[0, 0])
    with pytest.raises(RuntimeError, match="needs log_count and log_weight"):
        call(input_mode=0, logq=1.0)


@pytest.mark.parametrize("backend", ["kernels", "reference"])
@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=8)])
def test_tail_rows_take_no_part_in_updates(backend, mode):
    """At an epoch's tail (valid mask) the invalid rows' targets and inputs are not updated."""
    from gru4rec_ext.train import OutputLoss, compute_step
    if backend == "kernels" and not ext.has_kernel("train_step_", "CPU"):
        pytest.skip("kernels not built")
    torch.manual_seed(0)
    model = GRU4Rec(50, [16], backend=backend, **mode)
    out = OutputLoss(model, loss="bpr-max", bpreg=0.5, logq=0.0, mask_accidental_hits=False)
    inputs, targets = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    valid = torch.tensor([True, False, True, False])
    samples = torch.tensor([9, 10, 5, 11])
    _, _, _, sparse = compute_step(model, out, inputs, targets, torch.zeros(4, dtype=torch.bool), valid, samples,
                                   model.init_hidden(4), None)
    updated = {name: set(idx[idx >= 0].tolist()) for name, (idx, _) in sparse.items()}  # -1: skipped
    assert updated["By"] == {5, 7, 9, 10, 11}
    touched = updated["Wy"]
    assert {6, 8}.isdisjoint(touched) and {5, 7, 9, 10, 11} <= touched
    inputs_table = "Wy" if not mode else "E"
    assert {2, 4}.isdisjoint(updated[inputs_table])
    assert {1, 3} <= updated[inputs_table]


@FUSED
def test_fused_step_float64_without_samples():
    """A float64 model trains (the sampler's float32 log q tables are converted), with K = 0, and
    the fused step still equals the Python sequence."""
    train_data, _, item_map = rsc15_slice(60, 10)
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = GRU4Rec(item_map.n_items, [16], dropout_p_hidden=0.2, backend="kernels").double()
        trainer = Trainer(model, train_data, n_epochs=1, batch_size=8, n_sample=0, loss="cross-entropy", logq=1.0,
                          momentum=0.1, progress=False, seed=2)
        trainer.fused_step = fused
        results.append((trainer.run_epoch(0)["loss"], model.Wy.detach().clone()))
    assert math.isfinite(results[0][0]) and results[0][0] == results[1][0]
    assert results[0][1].dtype == torch.float64 and torch.equal(results[0][1], results[1][1])


@FUSED
def test_fused_step_opcheck():
    """Schema, fake kernel and mutation annotations of gru4rec::train_step_ (a 1-layer model)."""
    import gru4rec_ext.ops.train_step  # noqa: F401  (registers the fake kernel)
    torch.manual_seed(0)
    n, h, b = 12, 4, 3
    tables = [torch.randn(n, h), torch.zeros(n)]
    gru = [torch.randn(3 * h, h), torch.randn(3 * h, h), torch.zeros(3 * h), torch.zeros(3 * h)]
    ids = torch.tensor([1, 2, 3])
    args = (ids, torch.tensor([4, 5, 6]), torch.zeros(b, dtype=torch.bool), None, torch.tensor([7, 1]),
            torch.zeros(n), torch.zeros(n), torch.zeros(1, b, h), tables, [torch.zeros_like(t) for t in tables],
            [torch.zeros_like(t) for t in tables], gru, [torch.zeros_like(t) for t in gru],
            [torch.zeros_like(t) for t in gru], [0], 0, 0.0, 0.0, 4, 0, 1.0, 0.0, 1.0, False, 0.1, 0.2, 1e-6)
    torch.library.opcheck(torch.ops.gru4rec.train_step_.default, args,
                          test_utils=("test_schema", "test_faketensor"))
