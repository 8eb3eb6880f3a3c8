"""The gru4rec command line: train / evaluate / recommend / preprocess smoke tests and its errors."""
import json
import os

import pytest

from gru4rec_ext.cli import CLIError, main, resolve_config

from train_helpers import DIGINETICA_SAMPLE, rsc15_frames, write_tsv

SMALL = "layers=16,n_epochs=1,batch_size=16,n_sample=32"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tr, te = rsc15_frames(300, 80)
    return write_tsv(tr, d / "train.tsv"), write_tsv(te, d / "test.tsv"), d


def test_config_precedence(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"batch_size": 64, "momentum": 0.5, "n_sample": 10}))
    cfg = resolve_config("rsc15", str(cfg_file), "momentum=0.7,layers=50/50", {"n_sample": 5, "loss": None})
    assert cfg["learning_rate"] == 0.2  # preset
    assert cfg["batch_size"] == 64  # config file over preset
    assert cfg["momentum"] == 0.7 and cfg["layers"] == [50, 50]  # --params over config file
    assert cfg["n_sample"] == 5  # explicit option over everything
    assert cfg["final_activation"] == "linear"
    assert resolve_config("diginetica")["final_activation"] == "elu-1"
    with pytest.raises(CLIError, match="unknown parameter"):
        resolve_config(params="hidden=3")


def test_train_evaluate_recommend(files, capsys):
    train, test, d = files
    model = str(d / "m.pt")
    out_json = str(d / "log.json")
    rc = main(["-q", "train", train, "--test", test, "--preset", "rsc15", "--params", SMALL, "--save-model", model,
               "--json", out_json, "--seed", "1", "-m", "5", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "20" in printed and os.path.exists(model)
    log = json.load(open(out_json))
    assert log["config"]["batch_size"] == 16 and "recall@20" in log["metrics"]["standard"]
    assert main(["-q", "evaluate", model, test, "-e", "all"]) == 0
    assert capsys.readouterr().out.strip()
    first_items = open(test).read().splitlines()[1:3]
    items = ",".join(line.split("\t")[1] for line in first_items)
    assert main(["-q", "recommend", model, "--session", items, "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("1\t")
    assert main(["-q", "recommend", model, "--events", test, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(open(test).read().splitlines()) - 1


def test_resume_from_checkpoints(files):
    train, _, d = files
    model = str(d / "r.pt")
    assert main(["-q", "train", train, "--params", SMALL, "--n-epochs", "1", "--save-model", model]) == 0
    assert main(["-q", "train", train, "--params", SMALL, "--n-epochs", "2", "--save-model", model, "--resume"]) == 0
    import torch
    assert torch.load(model + ".checkpoints/last.pt", weights_only=True)["epoch"] == 2


def test_preprocess_diginetica(tmp_path, capsys):
    rc = main(["-q", "preprocess", "diginetica", DIGINETICA_SAMPLE, str(tmp_path / "out")])
    assert rc == 0 and os.listdir(tmp_path / "out")


@pytest.mark.parametrize("argv, message", [
    (["train", "{train}", "--preset", "nope"], "unknown preset"),
    (["train", "{train}", "--params", "layers"], "bad --params"),
    (["train", "{train}", "--params", "bogus=1"], "unknown parameter"),
    (["train", "{train}", "--params", "batch_size=abc"], "batch_size"),
    (["train", "/no/such/file.tsv"], "no such file"),
    (["evaluate", "/no/such/model.pt", "{train}"], "does not exist"),
])
def test_errors_exit_2_one_line(files, capsys, argv, message):
    train, _, d = files
    rc = main(["-q"] + [a.format(train=train) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_data_error_passes_through(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("SessionId\tItem\tTime\n1\t2\t3\n")
    assert main(["-q", "train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ItemId" in err or "column" in err


def test_custom_column_names(files, tmp_path, capsys):
    import pandas as pd
    train, test, _ = files
    df = pd.read_csv(train, sep="\t").rename(columns={"SessionId": "sid", "ItemId": "iid", "Time": "ts"})
    path = write_tsv(df, tmp_path / "renamed.tsv")
    model = str(tmp_path / "k.pt")
    keys = ["--session-key", "sid", "--item-key", "iid", "--time-key", "ts"]
    assert main(["-q", "train", path, "--params", SMALL, "--save-model", model] + keys) == 0
    assert main(["-q", "recommend", model, "--events", path, "-k", "2"] + keys) == 0
    assert capsys.readouterr().out.splitlines()[0] == "sid\tiid\trecommendations"
