"""Checkpoints: atomic, weights_only-loadable, identical scores after a round trip, resumable runs."""
import os

import pytest
import torch

from gru4rec_ext.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gru4rec_ext.model import GRU4Rec
from gru4rec_ext.train import Trainer, train

from train_helpers import rsc15_slice

KW = dict(batch_size=16, n_sample=64, sample_alpha=0.5, loss="cross-entropy", logq=1.0, learning_rate=0.1,
          momentum=0.2, progress=False)


@pytest.fixture(scope="module")
def small():
    return rsc15_slice(400, 100)


def _model(n, seed=0):
    torch.manual_seed(seed)
    return GRU4Rec(n, [16], dropout_p_hidden=0.3)


def test_round_trip_identical_scores_weights_only(small, tmp_path):
    train_data, _, item_map = small
    model = _model(item_map.n_items)
    tr = Trainer(model, train_data, n_epochs=1, seed=0, **KW)
    tr.fit()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, tr.optimizer, {"note": "x"}, item_map, 1, {"k": torch.ones(2)})
    assert [p for p in os.listdir(tmp_path) if p != "m.pt"] == []  # no temporary file left
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 1 and raw["config"]["note"] == "x"
    loaded, opt_state, config, imap, epoch = load_checkpoint(path)
    assert epoch == 1 and imap == item_map and loaded.item_map == item_map
    assert torch.equal(opt_state["acc"]["Wy"], tr.optimizer.acc["Wy"])
    ids = torch.tensor([0, 5, 9])
    reset = torch.ones(3, dtype=torch.bool)
    model.eval()
    out_a, _ = model.step(ids, reset, model.init_hidden(3))
    out_b, _ = loaded.step(ids, reset, loaded.init_hidden(3))
    assert torch.equal(model.score(out_a), loaded.score(out_b))


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        read_checkpoint(bad)
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gru4rec_ext checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_resume_equals_uninterrupted(small, tmp_path):
    train_data, _, item_map = small
    full = _model(item_map.n_items)
    train(full, train_data, n_epochs=3, seed=3, **KW)

    ckpt = tmp_path / "ckpt"
    first = _model(item_map.n_items)
    train(first, train_data, n_epochs=2, seed=3, checkpoint_dir=str(ckpt), **KW)  # "killed" after epoch 2
    assert read_checkpoint(ckpt / "last.pt")["epoch"] == 2
    resumed = _model(item_map.n_items, seed=99)  # fresh weights: everything must come from the checkpoint
    tr = Trainer(resumed, train_data, n_epochs=3, seed=3, checkpoint_dir=str(ckpt), resume=True, **KW)
    assert tr.start_epoch == 2
    summary = tr.fit()
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert read_checkpoint(ckpt / "last.pt")["epoch"] == 3
