"""Reading event logs, item maps and sessions (SPEC section 1): formats, every bad input, order."""
import gzip
import os

import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec_ext.data import DataError, ItemMap, SessionData, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSC15_TRAIN = os.path.join(ROOT, "data", "rsc15_100k", "train.tsv.xz")
RSC15_TEST = os.path.join(ROOT, "data", "rsc15_100k", "test.tsv.xz")

EVENTS = pd.DataFrame({
    "SessionId": [1, 1, 1, 2, 2, 3, 4, 4],
    "ItemId": [10, 11, 10, 12, 10, 11, 13, 12],
    "Time": [5.0, 6.0, 7.0, 1.0, 2.0, 3.0, 9.0, 8.0],
})


def write_text(path, text, compress=None):
    data = text.encode()
    if compress == "gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    elif compress == "xz":
        import lzma
        with lzma.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return str(path)


TSV = "SessionId\tItemId\tTime\n1\t10\t5\n1\t11\t6\n2\t12\t1\n2\t10\t2\n"


# ---------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("name,text,compress", [
    ("e.tsv", TSV, None),
    ("e.csv", TSV.replace("\t", ","), None),
    ("e.csv", TSV.replace("\t", ";"), None),
    ("e.tsv.gz", TSV, "gz"),
    ("e.tsv.xz", TSV, "xz"),
    ("e.txt", TSV, None),
])
def test_read_text_formats(tmp_path, name, text, compress):
    df = read_events(write_text(tmp_path / name, text, compress))
    assert list(df.columns) == ["SessionId", "ItemId", "Time"]
    assert df["ItemId"].tolist() == [10, 11, 12, 10]
    assert df["ItemId"].dtype == np.int64
    assert df["Time"].dtype == np.float64
    assert df["Time"].tolist() == [5.0, 6.0, 1.0, 2.0]


def test_read_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "e.parquet"
    EVENTS.rename(columns={"ItemId": "item"}).to_parquet(path)
    df = read_events(path, item_key="item")
    assert list(df.columns) == ["SessionId", "ItemId", "Time"]
    assert df["ItemId"].tolist() == EVENTS["ItemId"].tolist()


def test_read_string_items_and_renamed_keys(tmp_path):
    text = "sess,item,ts\na,x1,5\na,007,6\nb,x1,1\nb,y,2\n"
    df = read_events(write_text(tmp_path / "s.csv", text), "sess", "item", "ts")
    assert df["ItemId"].tolist() == ["x1", "007", "x1", "y"]
    assert all(isinstance(v, str) for v in df["ItemId"])
    assert df["SessionId"].tolist() == ["a", "a", "b", "b"]


def test_read_datetime_time_to_epoch_seconds(tmp_path):
    text = "SessionId,ItemId,Time\n1,5,2014-04-07T10:51:09.277Z\n1,6,2014-04-07T10:51:10.277Z\n"
    df = read_events(write_text(tmp_path / "d.csv", text))
    expect = pd.Timestamp("2014-04-07T10:51:09.277Z").timestamp()
    assert df["Time"].iloc[0] == pytest.approx(expect)
    assert df["Time"].iloc[1] - df["Time"].iloc[0] == pytest.approx(1.0)


def test_read_shipped_rsc15():
    df = read_events(RSC15_TRAIN)
    assert len(df) == 70278 and df["SessionId"].nunique() == 17794 and df["ItemId"].nunique() == 2933


# ---------------------------------------------------------------------------------------------- errors

def test_error_missing_file(tmp_path):
    path = str(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="nope.tsv.*no such file"):
        read_events(path)


def test_error_empty_file(tmp_path):
    path = write_text(tmp_path / "empty.tsv", "")
    with pytest.raises(DataError, match="empty.tsv.*empty"):
        read_events(path)


def test_error_header_only(tmp_path):
    path = write_text(tmp_path / "hdr.tsv", "SessionId\tItemId\tTime\n")
    with pytest.raises(DataError, match="hdr.tsv.*no events"):
        read_events(path)


def test_error_missing_columns_lists_present(tmp_path):
    path = write_text(tmp_path / "cols.tsv", "SessionId\tItem\tTime\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"cols.tsv.*missing column.*'ItemId'.*\['SessionId', 'Item', 'Time'\]"):
        read_events(path)


def test_error_missing_columns_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "cols.parquet"
    EVENTS.drop(columns=["Time"]).to_parquet(path)
    with pytest.raises(DataError, match="cols.parquet.*missing column.*'Time'"):
        read_events(path)


def test_error_nan_session_id(tmp_path):
    path = write_text(tmp_path / "ns.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n\t2\t4\n")
    with pytest.raises(DataError, match="ns.tsv.*'SessionId'.*missing"):
        read_events(path)


def test_error_nan_item_id(tmp_path):
    path = write_text(tmp_path / "ni.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n1\tNaN\t4\n")
    with pytest.raises(DataError, match="ni.tsv.*'ItemId'.*missing"):
        read_events(path)


def test_error_nan_time(tmp_path):
    path = write_text(tmp_path / "nt.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n1\t3\t\n")
    with pytest.raises(DataError, match="nt.tsv.*'Time'.*missing"):
        read_events(path)


def test_error_non_numeric_time(tmp_path):
    path = write_text(tmp_path / "tx.tsv", "SessionId\tItemId\tTime\n1\t2\t3\n1\t3\tlater\n")
    with pytest.raises(DataError, match="tx.tsv.*'Time'.*not numeric.*later"):
        read_events(path)


def test_error_unreadable_compressed_file(tmp_path):
    path = tmp_path / "bad.tsv.xz"
    path.write_bytes(b"this is not xz data at all")
    with pytest.raises(DataError, match="bad.tsv.xz"):
        read_events(path)


def test_error_test_file_with_no_known_items(tmp_path):
    train = pd.DataFrame({"SessionId": [1, 1], "ItemId": [1, 2], "Time": [0.0, 1.0]})
    test = pd.DataFrame({"SessionId": [5, 5], "ItemId": [8, 9], "Time": [0.0, 1.0]})
    imap = ItemMap.fit(train["ItemId"])
    with pytest.raises(DataError, match="mytest.tsv.*no event has an item of the item map"):
        SessionData.from_events(test, imap, drop_unknown=True, name="mytest.tsv")


def test_error_only_short_sessions_left():
    imap = ItemMap.fit([1, 2])
    test = pd.DataFrame({"SessionId": [5, 5, 6], "ItemId": [1, 9, 2], "Time": [0.0, 1.0, 2.0]})
    with pytest.raises(DataError, match="t.tsv.*no session with at least 2 events"):
        SessionData.from_events(test, imap, drop_unknown=True, name="t.tsv")


def test_error_unknown_items_without_drop():
    imap = ItemMap.fit([1, 2])
    test = pd.DataFrame({"SessionId": [5, 5], "ItemId": [1, 9], "Time": [0.0, 1.0]})
    with pytest.raises(DataError, match="x.tsv.*1 event.*not in the item map.*drop_unknown"):
        SessionData.from_events(test, imap, name="x.tsv")


def test_error_session_data_missing_column():
    with pytest.raises(DataError, match="frame.*missing column.*'Time'"):
        SessionData.from_events(EVENTS.drop(columns=["Time"]), ItemMap.fit([10]), name="frame")


# ---------------------------------------------------------------------------------------------- ItemMap

def test_item_map_sorted_encode_decode():
    imap = ItemMap.fit([30, 10, 20, 10])
    assert imap.n_items == 3
    assert imap.encode([20, 10, 99, 30]).tolist() == [1, 0, -1, 2]
    assert imap.encode([20]).dtype == np.int64
    assert imap.decode(np.array([2, 0])).tolist() == [30, 10]
    assert imap.decode(torch.tensor([1])).tolist() == [20]


@pytest.mark.parametrize("labels", [[5, 3, 3, 9, 2 ** 40], ["b", "a", "007", "a"]])
def test_item_map_round_trip_torch_save_weights_only(tmp_path, labels):
    imap = ItemMap.fit(labels)
    path = tmp_path / "map.pt"
    torch.save({"item_map": imap.state_dict()}, path)
    state = torch.load(path, weights_only=True)["item_map"]
    again = ItemMap.from_state_dict(state)
    assert again == imap
    assert again.encode(labels).tolist() == imap.encode(labels).tolist()
    assert type(again.decode([0])[0]) is type(imap.decode([0])[0])


def test_item_map_deterministic_regardless_of_order():
    a = ItemMap.fit(["z", "x", "y"])
    b = ItemMap.fit(["y", "z", "x", "x"])
    assert a == b and a.decode([0, 1, 2]).tolist() == ["x", "y", "z"]


def test_item_map_string_query_on_int_map():
    imap = ItemMap.fit([3, 4])
    assert imap.encode(np.array(["4", "x"], dtype=object)).tolist() == [1, -1]


# ---------------------------------------------------------------------------------------------- sessions

def test_session_order_and_layout():
    imap = ItemMap.fit(EVENTS["ItemId"])
    data = SessionData.from_events(EVENTS, imap, min_session_length=2)
    # session 3 has one event: dropped; sessions by start time: 2 (t=1), 1 (t=5), 4 (t=8)
    assert data.session_ids.tolist() == [2, 1, 4]
    assert data.offsets.tolist() == [0, 2, 5, 7]
    labels = imap.decode(data.items).tolist()
    assert labels == [12, 10, 10, 11, 10, 12, 13]  # session 4's events sorted by time
    assert data.n_events == 7 and data.n_sessions == 3 and data.n_pairs == 4
    assert data.item_counts().tolist() == [3, 1, 2, 1]
    assert data.item_counts().dtype == np.int64


def test_session_ties_on_start_time_by_session_id_and_stable_events():
    df = pd.DataFrame({"SessionId": [9, 9, 4, 4, 4], "ItemId": [1, 2, 3, 4, 5],
                       "Time": [0.0, 1.0, 0.0, 2.0, 2.0]})
    data = SessionData.from_events(df, ItemMap.fit(df["ItemId"]))
    assert data.session_ids.tolist() == [4, 9]
    assert data.item_map.decode(data.items).tolist() == [3, 4, 5, 1, 2]


def test_drop_unknown_bridges_pairs():
    imap = ItemMap.fit([1, 2, 3])
    test = pd.DataFrame({"SessionId": [7, 7, 7, 8, 8], "ItemId": [1, 99, 2, 3, 98],
                         "Time": [0.0, 1.0, 2.0, 0.5, 0.6]})
    data = SessionData.from_events(test, imap, drop_unknown=True)
    assert data.session_ids.tolist() == [7]  # session 8 is left with one event
    assert imap.decode(data.items).tolist() == [1, 2]


def test_shipped_rsc15_sessions():
    train = SessionData.from_file(RSC15_TRAIN)
    assert (train.n_events, train.n_sessions, train.n_items) == (70278, 17794, 2933)
    assert train.item_counts().sum() == train.n_events
    test = SessionData.from_file(RSC15_TEST, train.item_map, drop_unknown=True)
    assert test.n_pairs == 10152  # the pairs the authors' implementation scores (REFERENCE.md)
    # sessions ordered by start time
    starts = test.times[test.offsets[:-1]]
    assert np.all(np.diff(starts) >= 0)


# ---------------------------------------------------------------------------------------------- preprocessing

from gru4rec_ext.preprocess import preprocess_diginetica, preprocess_yoochoose  # noqa: E402

DIGINETICA_SAMPLE = os.path.join(ROOT, "data", "diginetica_sample", "train-item-views.csv.xz")
BASE = pd.Timestamp("2014-04-01T00:00:00Z")
H, D = 3600, 86400
# (session, seconds after BASE, item); see test_preprocess_yoochoose_synthetic for what survives
CLICKS = [
    (1, 0, 1), (1, 60, 2), (1, 120, 3),
    (2, H, 2), (2, H + 60, 1),
    (3, 2 * H, 3), (3, 2 * H + 60, 1), (3, 2 * H + 120, 2),
    (4, 3 * H, 4), (4, 3 * H + 60, 1),                 # item 4 has 4 events: dropped, then s4 too short
    (5, 4 * H, 1),                                     # length 1
    (6, 5 * H, 4), (6, 5 * H + 60, 4), (6, 5 * H + 120, 4),
    (11, 6 * H, 2), (11, 6 * H + 60, 3),
    (12, 7 * H, 3), (12, 7 * H + 60, 2), (12, 7 * H + 90, 1),
    (14, D + 5 * H, 1), (14, D + 5 * H + 60, 3),
    (7, 2 * D + H, 1), (7, 2 * D + H + 60, 2),
    (8, 2 * D + 2 * H, 3), (8, 2 * D + 2 * H + 60, 5),  # item 5 never in train: s8 left with 1 event
    (9, 2 * D + 3 * H, 5), (9, 2 * D + 3 * H + 10, 5), (9, 2 * D + 3 * H + 20, 5),
    (9, 2 * D + 3 * H + 30, 5), (9, 2 * D + 3 * H + 40, 5),
    (10, 2 * D - 100, 1), (10, 2 * D + 10, 3),          # ends in the last day: test
    (13, 3 * D, 2), (13, 3 * D - 30, 1),
]


def test_preprocess_yoochoose_synthetic(tmp_path):
    lines = [f"{s},{(BASE + pd.Timedelta(seconds=t)).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z,{i},0"
             for s, t, i in CLICKS]
    clicks = write_text(tmp_path / "clicks.dat", "\n".join(lines) + "\n")
    counts = preprocess_yoochoose(clicks, tmp_path / "out")
    sessions = {}
    for name in ("train_full", "test", "train_tr", "train_valid"):
        df = read_events(tmp_path / "out" / f"{name}.tsv")
        sessions[name] = sorted(df["SessionId"].unique().tolist())
        assert counts[name] == {"events": len(df), "sessions": df["SessionId"].nunique(),
                                "items": df["ItemId"].nunique()}
    assert sessions["train_full"] == [1, 2, 3, 11, 12, 14]
    assert sessions["test"] == [7, 10, 13]
    assert sessions["train_tr"] == [1, 2, 3]
    assert sessions["train_valid"] == [11, 12, 14]
    assert counts["train_full"]["events"] == 15 and counts["test"]["events"] == 6
    test = read_events(tmp_path / "out" / "test.tsv")
    s13 = test[test["SessionId"] == 13]
    assert s13["ItemId"].tolist() == [1, 2]  # sorted by time
    assert s13["Time"].tolist() == pytest.approx([(BASE.timestamp() + 3 * D - 30), BASE.timestamp() + 3 * D])


def test_preprocess_diginetica_sample(tmp_path):
    counts = preprocess_diginetica(DIGINETICA_SAMPLE, tmp_path)
    parts = {name: read_events(tmp_path / f"{name}.tsv") for name in counts}
    for name, df in parts.items():
        assert counts[name]["events"] == len(df) > 0
        assert df.groupby("SessionId").size().min() >= 2
    train, test = parts["train_full"], parts["test"]
    assert set(test["ItemId"]) <= set(train["ItemId"])
    assert set(parts["train_valid"]["ItemId"]) <= set(parts["train_tr"]["ItemId"])
    assert set(parts["train_tr"]["SessionId"]) | set(parts["train_valid"]["SessionId"]) <= set(train["SessionId"])
    # split by session start: every test session starts after every train session's start cut
    raw = pd.read_csv(DIGINETICA_SAMPLE, sep=";")
    day = (pd.to_datetime(raw["eventdate"], utc=True) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    t = (day + raw["timeframe"] / 1000).round(3)
    assert train["Time"].round(3).isin(t).all() and test["Time"].round(3).isin(t).all()
    cut = max(train["Time"].max(), test["Time"].max()) - 7 * 86400
    assert (test.groupby("SessionId")["Time"].min() >= cut).all()
    assert (train.groupby("SessionId")["Time"].min() < cut).all()


def test_preprocess_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv.*no such file"):
        preprocess_diginetica(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(DataError, match="nope.dat.*no such file"):
        preprocess_yoochoose(tmp_path / "nope.dat", tmp_path)
