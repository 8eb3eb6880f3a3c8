"""gru4rec tune: the time-based validation split, search spaces, and short studies on tiny data."""
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import pytest

from gru4rec_ext.cli import main
from gru4rec_ext.data import DataError
from gru4rec_ext.tuning import SpaceError, TrialConfig, load_space, load_tuning_data, parse_space
from gru4rec_ext.tuning.config import merge

from train_helpers import rsc15_frames, write_tsv

FIXED = "layers=16,batch_size=16,n_sample=32,n_epochs=2"
SPACE = {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3},
         "momentum": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}
DAY = 86400.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    tr, _ = rsc15_frames(400, 0)  # 1,502 events over 5.8 days; 99 sessions start in the last day
    space = d / "space.json"
    space.write_text(json.dumps(SPACE))
    return write_tsv(tr, d / "train.tsv"), str(space), d


def _events(rows):
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


# ----------------------------------------------------------------------------------------------
# validation split (no Optuna needed)


def test_time_split_is_exact():
    end = 10 * DAY
    cut = end - DAY
    df = _events([
        (1, 10, 0.0), (1, 11, 5.0),                      # trains
        (2, 11, cut - 1), (2, 12, cut + 100),            # starts before the cut: trains (events after it too)
        (3, 10, cut), (3, 12, cut + 1),                  # starts exactly at the cut: validates
        (4, 10, cut + 50), (4, 99, cut + 51), (4, 11, cut + 52),  # item 99 unknown: dropped, 2 events stay
        (5, 12, cut + 60), (5, 98, cut + 61),            # 1 known event left: session dropped
        (6, 10, cut + 70),                               # length 1: dropped
        (7, 11, end - 10), (7, 10, end),                 # validates; holds max(Time)
    ])
    data = load_tuning_data(df, valid_days=1)
    train, valid = data.train, data.valid
    assert list(train.session_ids) == [1, 2]
    assert list(train.item_map.labels) == [10, 11, 12]
    assert list(valid.session_ids) == [3, 4, 7]
    assert list(valid.item_map.decode(valid.items)) == [10, 12, 10, 11, 11, 10]
    assert data.info["valid"] == {"events": 6, "sessions": 3, "cases": 3}
    assert data.info["cut_time"] == cut
    # two days: session 2 starts inside the window, so it validates and its item 12 leaves the map
    data2 = load_tuning_data(df, valid_days=2)
    assert list(data2.train.session_ids) == [1] and list(data2.train.item_map.labels) == [10, 11]
    assert list(data2.valid.session_ids) == [4, 7]


def test_valid_file_is_used_as_given_after_the_published_filters():
    train = _events([(1, 10, 0.0), (1, 11, 5.0), (2, 11, 9.0), (2, 12, 10.0)])
    valid = _events([(3, 10, 1.0), (3, 99, 2.0), (3, 12, 3.0), (4, 11, 4.0), (4, 98, 5.0), (5, 10, 6.0)])
    data = load_tuning_data(train, valid)  # no time split: all of TRAIN trains
    assert list(data.train.session_ids) == [1, 2] and data.info["source"] == "file"
    assert list(data.valid.session_ids) == [3] and list(data.valid.item_map.decode(data.valid.items)) == [10, 12]


def test_time_split_matches_the_published_rule(files):
    from gru4rec_ext.preprocess import split_by_time
    tr = pd.read_csv(files[0], sep="\t")
    data = load_tuning_data(files[0], valid_days=1.5)
    ref_train, ref_valid = split_by_time(tr, 1.5 * DAY, by="start")
    starts = tr.groupby("SessionId").Time.min()
    late = set(starts.index[starts >= tr.Time.max() - 1.5 * DAY])
    assert set(ref_train.SessionId) == set(starts.index) - late
    assert set(data.valid.session_ids) == set(ref_valid.SessionId) <= late
    assert data.valid.n_events == len(ref_valid)
    assert set(data.valid.item_map.decode(data.valid.items)) <= set(ref_train.ItemId)


def test_empty_validation_split_is_an_error():
    df = _events([(1, 10, 0.0), (1, 11, 5.0), (2, 10, 100.0), (2, 11, 2 * DAY)])
    with pytest.raises(DataError, match="validation split is empty: no session starts there"):
        load_tuning_data(df, valid_days=0.5)
    df2 = _events([(1, 10, 0.0), (1, 11, 5.0), (2, 20, 2 * DAY), (2, 21, 2 * DAY + 1)])
    with pytest.raises(DataError, match="validation split is empty: 1 session"):
        load_tuning_data(df2, valid_days=0.5)
    with pytest.raises(DataError, match="nothing is left to train on"):
        load_tuning_data(df2, valid_days=10)


# ----------------------------------------------------------------------------------------------
# search spaces and trial configurations (no Optuna needed)


def test_space_formats(tmp_path):
    authors = tmp_path / "authors.json"  # the authors' JSON-lines format, unchanged
    authors.write_text('{"name":"layers", "dtype":"int", "values":[64,512], "step":32}\n'
                       '{"name":"learning_rate", "dtype":"float", "values":[0.01, 0.25], "step":0.005}\n'
                       '{"name":"elu_param", "dtype":"categorical", "values":[0.5, 1, 0]}\n')
    space = load_space(str(authors))
    assert [(p.name, p.type) for p in space] == [("layers", "int"), ("learning_rate", "float"),
                                                 ("elu_param", "categorical")]
    assert space[0].low == 64 and space[0].step == 32 and space[2].choices == (0.5, 1, 0)
    obj = parse_space({"momentum": {"low": 0.0, "high": 0.9}, "final_activation": ["linear", "elu-1"],
                       "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True}})
    assert [p.type for p in obj] == ["float", "categorical", "float"] and obj[2].log


@pytest.mark.parametrize("space, message", [
    ({"hidden_size": {"low": 1, "high": 2}}, "unknown parameter 'hidden_size'"),
    ([{"name": "bogus", "type": "int", "low": 1, "high": 2}], "unknown parameter 'bogus'"),
    ({"momentum": {"low": 0.9, "high": 0.1}}, "low .* is above high"),
    ({"learning_rate": {"low": 0.01, "high": 0.3, "log": True, "step": 0.01}}, "cannot have a step"),
    ({"momentum": {"lo": 0.0, "high": 0.5}}, "unknown key"),
    ({"momentum": 0.5}, "fix a value with --params"),
    ({"layers": ["abc"]}, "not a valid value"),
    ({}, "empty"),
])
def test_space_errors(space, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(space)


def test_trial_config_merging():
    setup = TrialConfig(preset="diginetica", params="layers=32")
    assert setup.loss == "bpr-max" and "layers" not in [p.name for p in setup.space]
    assert "bpreg" in [p.name for p in setup.space]  # the bpr-max family's space
    cfg = setup.build({"final_activation": "linear", "bpreg": 0.5, "dropout_p_hidden": 0.1 + 0.2})
    assert cfg["final_activation"] == "linear" and cfg["elu_param"] == 0.0 and cfg["layers"] == [32]
    assert cfg["dropout_p_hidden"] == 0.3  # not 0.30000000000000004
    assert cfg["batch_size"] == 128 and cfg["logq"] == 0.0  # the preset's values where nothing is sampled
    assert setup.build({"final_activation": "elu-0.5"})["elu_param"] == 0.5
    # elu_param fixed by --params takes final_activation out of the search
    assert "final_activation" not in [p.name for p in TrialConfig(params="loss=bpr-max,elu_param=1").space]
    xe = TrialConfig()
    assert xe.loss == "cross-entropy" and xe.fixed["logq"] == 1.0 and xe.fixed["final_activation"] == "linear"
    assert merge([{"layers": [64], "elu_param": 0.0}, {"n_layers": 3}])["layers"] == [64, 64, 64]
    point = TrialConfig(preset="diginetica").preset_point()
    assert point == {"layers": 512, "batch_size": 128, "learning_rate": 0.05, "dropout_p_embed": 0.5,
                     "dropout_p_hidden": 0.3, "momentum": 0.15, "sample_alpha": 0.3, "bpreg": 0.9,
                     "final_activation": "elu-1"}


def test_missing_optuna_says_how_to_install(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    assert main(["-q", "tune", files[0], "--out", str(files[2] / "none")]) == 2
    err = capsys.readouterr().err
    assert "gru4rec tune: error:" in err and "pip install 'gru4rec-ext[tune]'" in err


# ----------------------------------------------------------------------------------------------
# studies (need Optuna)


def test_three_trial_study_and_its_config_trains(files, capsys):
    pytest.importorskip("optuna")
    train, space, d = files
    out = d / "study3"
    rc = main(["-q", "--threads", "1", "tune", train, "--preset", "rsc15", "--params", FIXED, "--space", space,
               "--trials", "3", "--out", str(out), "--pruner", "none"])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("trial ")]
    assert len([line for line in lines if "complete" in line]) == 3, printed
    assert "trial 0 is the preset 'rsc15'" in printed and "rank" in printed
    summary = json.load(open(out / "summary.json"))
    assert summary["trials"] == {"complete": 3} and summary["metric"] == "recall@20"
    rows = pd.read_csv(out / "trials.csv")
    assert len(rows) == 3 and rows.loc[rows.trial == 0, "learning_rate"].item() == 0.2  # the preset's point
    assert rows.loc[rows.trial == 0, "momentum"].item() == 0.2
    assert (out / "tune.png").stat().st_size > 10_000 and (out / "study.db").exists()
    best = json.load(open(out / "best_config.json"))
    assert best["layers"] == [16] and best["loss"] == "cross-entropy" and 1 <= best["n_epochs"] <= 2
    assert best["learning_rate"] == summary["best_params"]["learning_rate"]
    # the config loads in `gru4rec train`
    log = str(d / "from_best.json")
    assert main(["-q", "--threads", "1", "train", train, "--config", str(out / "best_config.json"),
                 "--json", log]) == 0
    trained = json.load(open(log))["config"]
    for key in ("learning_rate", "momentum", "batch_size", "n_epochs", "logq", "n_sample", "dropout_p_hidden"):
        assert trained[key] == best[key], key
    # running the command again with the same --trials resumes the study: nothing is left to do
    assert main(["-q", "tune", train, "--preset", "rsc15", "--params", FIXED, "--space", space, "--trials", "3",
                 "--out", str(out), "--pruner", "none", "--no-plot"]) == 0
    assert "already has 3 >= 3 trials" in capsys.readouterr().out


def _study(url, name="gru4rec"):
    import optuna
    return optuna.load_study(study_name=name, storage=url)


def test_interrupted_study_resumes_with_its_trials(files, monkeypatch):
    pytest.importorskip("optuna")
    import gru4rec_ext.evaluate as ev
    from gru4rec_ext.tuning import tune
    train, space, d = files
    out = d / "resume"
    url = f"sqlite:///{out}/study.db"
    kw = dict(params=FIXED, space=space, out_dir=out, pruner="none", plot=False)
    tune(train, trials=2, **kw)
    first = [(t.number, t.params, t.value) for t in _study(url).trials]
    assert len(first) == 2

    real = ev.evaluate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupt)  # Ctrl-C during trial 2's first validation
    with pytest.raises(KeyboardInterrupt):
        tune(train, trials=4, **kw)
    trials = _study(url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert trials[3].params == {} and trials[3].user_attrs["retry_of"] == 2

    monkeypatch.setattr(ev, "evaluate", real)
    result = tune(train, trials=4, **kw)
    trials = _study(url).trials
    assert [(t.number, t.params, t.value) for t in trials[:2]] == first  # kept as they were
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[3].params == trials[2].params  # the interrupted point ran again
    assert trials[4].params not in [t.params for t in trials[:3]]  # the resumed sampler draws new points
    assert result["best_value"] == max(t.value for t in trials if t.value is not None)


def test_pruning_stops_a_trial(files):
    optuna = pytest.importorskip("optuna")
    from gru4rec_ext.tuning import tune
    train, _, d = files
    out = d / "prune"
    url = f"sqlite:///{out}/study.db"
    # three good trials, then a hopeless one (a learning rate that learns nothing): the median pruner
    # stops it after its first epoch
    os.makedirs(out)
    study = optuna.create_study(study_name="gru4rec", storage=url, direction="maximize")
    for lr in (0.2, 0.2, 0.2, 1e-7):
        study.enqueue_trial({"learning_rate": lr})
    result = tune(train, params=FIXED.replace("n_epochs=2", "n_epochs=3"),
                  space={"learning_rate": [0.2, 1e-7]}, trials=4, out_dir=out, pruner="median", prune_after=1,
                  plot=False)
    trials = _study(url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert all(t.user_attrs["epochs"] == 3 for t in trials[:3])
    assert trials[3].user_attrs["epochs"] == 1 and list(trials[3].intermediate_values) == [1]
    assert trials[3].intermediate_values[1] < trials[0].intermediate_values[1]
    assert "1 pruned" in result["table"]


def test_time_budget_ends_the_running_trial(files):
    optuna = pytest.importorskip("optuna")
    from gru4rec_ext.tuning.study import Objective
    train, _, _ = files
    setup = TrialConfig(params=FIXED.replace("n_epochs=2", "n_epochs=3"), space=parse_space(SPACE))
    objective = Objective(setup, load_tuning_data(train), "mrr@20", 20, seed=0, device="cpu", progress=False,
                          eval_batch_size=64, deadline=time.monotonic() - 1, optuna=optuna)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state.name == "COMPLETE" and t.user_attrs["epochs"] == 1 and t.user_attrs["stopped"] == "time budget"
    assert t.value == t.intermediate_values[1] == t.user_attrs["valid"]["mrr@20"][0]


@pytest.mark.parametrize("args, message", [
    (["--space", "{space_bad}"], "unknown parameter 'hidden'"),
    (["--storage", "sqlite:////no/such/dir/study.db"], "cannot open the storage 'sqlite:////no/such/dir/study.db'"),
    (["--storage", "nosuchdb://user:secret@host/db"], "cannot open the storage 'nosuchdb://user:\\*\\*\\*@host/db'"),
    (["--valid-days", "0.00001"], "validation split is empty"),
    (["--metric", "ndcg@20"], "metric must be recall@N or mrr@N"),
    (["--params", "loss=bpr-max,logq=1"], "logq > 0 is only defined"),
])
def test_errors_exit_2_one_line(files, capsys, args, message):
    pytest.importorskip("optuna")
    train, _, d = files
    bad = d / "space_bad.json"
    bad.write_text(json.dumps({"hidden": {"low": 1, "high": 2}}))
    args = [a.replace("{space_bad}", str(bad)) for a in args]
    out = d / ("err" + str(abs(hash(tuple(args)))))
    rc = main(["-q", "tune", train, "--params", FIXED, "--trials", "1", "--out", str(out), "--no-plot"] + args)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gru4rec tune: error:")
    import re
    assert re.search(message, err[0]), err[0]
    assert "secret" not in err[0]


def test_trainer_on_epoch_end_hook(files):
    import torch

    from gru4rec_ext import GRU4Rec, Trainer
    data = load_tuning_data(files[0])
    calls = []

    def hook(epoch, result):
        calls.append((epoch, result["epoch"]))
        result["note"] = epoch * 10  # kept in the history and the JSON log
        if epoch == 2:
            raise StopIteration("enough")

    torch.manual_seed(0)
    model = GRU4Rec(data.train.n_items, layers=[8])
    log = str(files[2] / "hook.json")
    trainer = Trainer(model, data.train, n_epochs=4, batch_size=16, n_sample=8, progress=False, on_epoch_end=hook,
                      log_json=log)
    with pytest.raises(StopIteration, match="enough"):
        trainer.fit()
    assert calls == [(1, 1), (2, 2)] and [e["note"] for e in trainer.history] == [10, 20]
    assert [e["note"] for e in json.load(open(log))["epochs"]] == [10]  # epoch 2's JSON was not written
    with pytest.raises(TypeError, match="on_epoch_end must be callable"):
        Trainer(model, data.train, on_epoch_end=3)
