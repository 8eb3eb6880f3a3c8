"""evaluate() against a brute-force computation of SPEC section 6 with a fake model of known scores."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gru4rec_ext.data import DataError, ItemMap, SessionData
from gru4rec_ext.evaluate import evaluate, format_metrics


class FakeModel(torch.nn.Module):
    """The evaluate() protocol with scores known exactly: h' = 0.5 h + E[x] (rows with reset
    zeroed first), out = h', scores = act(out W^T + b). All values are small integers or halves, so
    float32 arithmetic is exact and scores tie often."""

    def __init__(self, n_items=12, hidden=3, activation="linear", seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = torch.nn.Parameter(torch.randint(-2, 3, (n_items, hidden), generator=g).float())
        self.W = torch.nn.Parameter(torch.randint(-1, 2, (n_items, hidden), generator=g).float())
        self.b = torch.nn.Parameter(torch.randint(-1, 2, (n_items,), generator=g).float())
        self.activation = activation
        self.n_items = n_items
        self.modes_seen = set()

    def init_hidden(self, batch_size, device):
        return torch.zeros(1, batch_size, self.E.shape[1], device=device)

    def step(self, item_ids, reset, hidden):
        self.modes_seen.add(self.training)
        assert not torch.is_grad_enabled()
        h = hidden[0] * (~reset).float()[:, None]
        h = 0.5 * h + self.E[item_ids]
        return h, h[None]

    def output_layer(self):
        return self.W, self.b, self.activation, 1.0


def brute_force(model, data, cutoffs):
    """Per session from a zero state, every pair ranked with plain numpy loops."""
    E, W, b = (t.detach().double().numpy() for t in (model.E, model.W, model.b))
    act = {"linear": lambda x: x, "tanh": np.tanh, "elu": lambda x: np.where(x > 0, x, np.expm1(x))}
    ranks = {"standard": [], "conservative": [], "median": []}
    for s in range(data.n_sessions):
        seq = data.items[data.offsets[s]:data.offsets[s + 1]]
        h = np.zeros(E.shape[1])
        for p in range(len(seq) - 1):
            h = 0.5 * h + E[seq[p]]
            scores = act[model.activation](W @ h + b).astype(np.float32)
            t = scores[seq[p + 1]]
            gt, eq = int((scores > t).sum()), int((scores == t).sum())
            ranks["standard"].append(1 + gt)
            ranks["conservative"].append(gt + eq)
            ranks["median"].append(1 + gt + (eq - 1) / 2)
    out = {"n_cases": len(ranks["standard"])}
    for mode, r in ranks.items():
        r = np.array(r, dtype=np.float64)
        out[mode] = {}
        for c in cutoffs:
            out[mode][f"recall@{c}"] = float(np.mean(r <= c))
            out[mode][f"mrr@{c}"] = float(np.mean((r <= c) / r))
    return out


def make_data(n_items=12, n_sessions=23, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        for p in range(int(rng.integers(1, 7))):
            rows.append((s, int(rng.integers(0, n_items)), float(s * 100 + p)))
    df = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
    return SessionData.from_events(df, ItemMap.fit(range(n_items)), name="fake")


@pytest.mark.parametrize("activation", ["linear", "tanh", "elu"])
@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_evaluate_equals_brute_force(activation, batch_size):
    model = FakeModel(activation=activation)
    data = make_data()
    cutoffs = (1, 2, 5, 20)
    got = evaluate(model, data, batch_size=batch_size, cutoffs=cutoffs, progress=False)
    want = brute_force(model, data, cutoffs)
    assert got["n_cases"] == want["n_cases"] == data.n_pairs
    assert got["standard"]["recall@1"] != got["conservative"]["recall@1"], "the case should have ties"
    for mode in ("standard", "conservative", "median"):
        assert set(got[mode]) == set(want[mode])
        for key, value in want[mode].items():
            assert got[mode][key] == pytest.approx(value, abs=1e-12), (mode, key)


def test_evaluate_chunked_scoring_same_result():
    model, data = FakeModel(), make_data()
    a = evaluate(model, data, batch_size=5, progress=False)
    b = evaluate(model, data, batch_size=5, progress=False, chunk_size=5)
    assert a == b


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host (a device sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() in ("aten::_local_scalar_dense", "aten::item", "aten::equal"):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_evaluate_reads_the_device_once_not_per_batch(chunk_size):
    """The evaluation loop never waits for the device (issue 10): ranks and metrics are summed on
    the device and read at the end, so the number of host reads does not grow with the steps."""
    model, data = FakeModel(), make_data()
    counts = []
    for batch_size in (2, 5):  # different numbers of steps
        with HostReads() as reads:
            evaluate(model, data, batch_size=batch_size, progress=False, chunk_size=chunk_size)
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 2, counts  # the reads after the loop


@pytest.mark.parametrize("backend", ["kernels", "reference"])
def test_evaluate_gru4rec_reads_the_device_once(backend):
    """The same with the real model's step (its GRU and output layer, either backend)."""
    from gru4rec_ext.model import GRU4Rec
    from train_helpers import rsc15_slice
    _, test, item_map = rsc15_slice(60, 30)
    model = GRU4Rec(item_map.n_items, [16], backend=backend)
    counts = []
    for batch_size in (4, 9):
        with HostReads() as reads:
            evaluate(model, test, batch_size=batch_size, progress=False)
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 2, counts


def test_evaluate_restores_mode_and_no_grad():
    model, data = FakeModel(), make_data()
    model.train()
    evaluate(model, data, batch_size=3, progress=False, tie_modes=("median",))
    assert model.modes_seen == {False} and model.training
    model.eval()
    evaluate(model, data, batch_size=3, progress=False)
    assert not model.training


def test_evaluate_subset_of_tie_modes_and_format():
    result = evaluate(FakeModel(), make_data(), batch_size=8, tie_modes=("standard",), progress=False)
    assert set(result) == {"n_cases", "standard"}
    assert list(result["standard"]) == ["recall@1", "recall@5", "recall@10", "recall@20",
                                        "mrr@1", "mrr@5", "mrr@10", "mrr@20"]
    text = format_metrics(result)
    assert "recall@20" in text and "standard" in text and str(result["n_cases"]) in text


def test_evaluate_bad_arguments():
    model, data = FakeModel(), make_data()
    with pytest.raises(ValueError, match="item map has 12 items but the model has 13"):
        evaluate(FakeModel(n_items=13), data, progress=False)
    with pytest.raises(ValueError, match="cutoffs"):
        evaluate(model, data, cutoffs=(0,), progress=False)
    with pytest.raises(ValueError, match="tie_modes"):
        evaluate(model, data, tie_modes=("optimistic",), progress=False)
    with pytest.raises(TypeError, match="data"):
        evaluate(model, None, progress=False)


def test_evaluate_no_pairs_is_an_error():
    imap = ItemMap.fit(range(12))
    df = pd.DataFrame({"SessionId": [1, 2], "ItemId": [3, 4], "Time": [0.0, 1.0]})
    data = SessionData.from_events(df, imap, min_session_length=1, name="single.tsv")
    with pytest.raises(DataError, match="single.tsv.*no .* pairs"):
        evaluate(FakeModel(), data, progress=False)


def test_evaluate_nonfinite_output_is_an_error():
    model, data = FakeModel(), make_data()
    with torch.no_grad():
        model.E[2, 0] = float("nan")
    assert (data.items == 2).any()
    with pytest.raises(FloatingPointError, match="fake.*NaN or infinite"):
        evaluate(model, data, batch_size=4, progress=False)
