"""Recommendations: SessionRecommender == model.step on the same sequences; model.recommend."""
import pytest
import torch

from gru4rec_ext.data import ItemMap
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.recommend import SessionRecommender


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = GRU4Rec(30, [8, 8]).eval()
    with torch.no_grad():
        m.By.normal_()
    m.item_map = ItemMap.fit([100 + i for i in range(30)])
    return m


def _expected(model, seq):
    h = model.init_hidden(1)
    for i, item in enumerate(seq):
        out, h = model.step(torch.tensor([item]), torch.tensor([i == 0]), h)
    return model.score(out)[0]


def test_session_recommender_matches_step(model):
    rec = SessionRecommender(model, k=5, max_sessions=4)
    events = [("a", 1), ("b", 7), ("a", 3), ("c", 2), ("b", 8), ("a", 4)]
    history = {}
    for sid, item in events:
        labels, scores = rec.update([sid], [100 + item])
        history.setdefault(sid, []).append(item)
        expect = _expected(model, history[sid])
        top = torch.topk(expect, 5)
        assert torch.allclose(scores[0], top.values, atol=1e-5)
        assert labels[0] == [100 + i for i in top.indices.tolist()]
    # batched, with a repeated session id in one call (processed in order)
    labels, scores = rec.update(["c", "d", "c"], [105, 106, 107])
    history["c"] += [5, 7]
    assert torch.allclose(scores[2], torch.topk(_expected(model, history["c"]), 5).values, atol=1e-5)
    assert torch.allclose(scores[1], torch.topk(_expected(model, [6]), 5).values, atol=1e-5)


def test_lru_eviction_and_end(model):
    rec = SessionRecommender(model, k=3, max_sessions=2)
    rec.update(["a", "b"], [101, 102])
    rec.update(["a"], [103])
    rec.update(["c"], [104])  # evicts b, the least recently updated
    assert "b" not in rec and "a" in rec and "c" in rec and len(rec) == 2
    rec.end("a")
    assert "a" not in rec
    _, scores = rec.update(["a"], [105])  # starts again from zero
    assert torch.allclose(scores[0], torch.topk(_expected(model, [5]), 3).values, atol=1e-5)


def test_unknown_item_keeps_state(model):
    rec = SessionRecommender(model, k=3)
    rec.update(["a"], [101])
    _, scores = rec.update(["a"], ["no-such-item"])
    assert torch.allclose(scores[0], torch.topk(_expected(model, [1]), 3).values, atol=1e-5)


def test_model_recommend_labels_and_exclude(model):
    labels, scores = model.recommend([101, 102, 103], k=30)
    expect = _expected(model, [1, 2, 3])
    assert labels[0] == 100 + int(expect.argmax()) and scores.shape == (30,)
    labels, _ = model.recommend([101, 102, 103], k=10, exclude_seen=True)
    assert not {101, 102, 103} & set(labels) and len(labels) == 10
    with pytest.raises(ValueError, match="no item"):
        model.recommend(["x"], k=3)
