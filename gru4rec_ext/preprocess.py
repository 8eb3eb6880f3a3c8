"""The published preprocessing and train/test splits of the benchmark logs (SPEC section 1).

YooChoose / RSC15 clicks (`preprocess_yoochoose`), as the GRU4Rec papers did it:
  drop sessions of length 1, drop items with fewer than 5 events, drop sessions shorter than 2
  again; sessions whose LAST event is in the final 86,400 s of the log form the test set; test
  events of items not in train are removed, then test sessions shorter than 2.

DIGINETICA item views (`preprocess_diginetica`), as common in the later literature:
  time = eventdate (UTC midnight, epoch seconds) + timeframe / 1000; filter iteratively until
  stable (sessions >= 2 events, items >= 5 events); sessions that START in the final 7 days
  (7 * 86,400 s before the last event) form the test set; test events of items not in train are
  removed, then test sessions shorter than 2.

The same split applied to train_full gives train_tr / train_valid for tuning. Each function writes
`train_full.tsv`, `test.tsv`, `train_tr.tsv`, `train_valid.tsv` (tab-separated SessionId, ItemId,
Time; events sorted by session id, then time) into `out_dir` and returns their counts.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .data import ITEM, SESSION, TIME, DataError, _plain_ids

logger = logging.getLogger("gru4rec_ext")

DAY = 86400.0
MIN_ITEM_SUPPORT = 5
MIN_SESSION_LENGTH = 2
OUTPUT_FILES = ("train_full", "test", "train_tr", "train_valid")


def _require_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")


def _drop_short_sessions(df: pd.DataFrame, min_length: int = MIN_SESSION_LENGTH) -> pd.DataFrame:
    lengths = df.groupby(SESSION)[ITEM].transform("size")
    return df[lengths >= min_length]


def _drop_rare_items(df: pd.DataFrame, min_support: int = MIN_ITEM_SUPPORT) -> pd.DataFrame:
    support = df.groupby(ITEM)[SESSION].transform("size")
    return df[support >= min_support]


def _filter_once(df: pd.DataFrame) -> pd.DataFrame:
    """The RSC15 filter: sessions >= 2, items >= 5, sessions >= 2 again."""
    return _drop_short_sessions(_drop_rare_items(_drop_short_sessions(df)))


def _filter_until_stable(df: pd.DataFrame) -> pd.DataFrame:
    """Sessions >= 2 and items >= 5, repeated until neither removes anything."""
    while True:
        before = len(df)
        df = _drop_rare_items(_drop_short_sessions(df))
        if len(df) == before:
            return _drop_short_sessions(df)


def _split(df: pd.DataFrame, seconds: float, by: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): test = sessions whose last ("end") or first ("start") event is at or after
    max(Time) - seconds; test keeps only train items, then sessions of length >= 2."""
    times = df.groupby(SESSION)[TIME].agg("max" if by == "end" else "min")
    cut = df[TIME].max() - seconds
    in_test = df[SESSION].map(times >= cut).to_numpy(dtype=bool)
    train, test = df[~in_test], df[in_test]
    test = _drop_short_sessions(test[test[ITEM].isin(train[ITEM].unique())])
    return train, test


def split_by_time(df: pd.DataFrame, seconds: float, by: str = "start") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) of an event table (columns SessionId, ItemId, Time), the published way.

    Holdout = the sessions whose first (`by="start"`) or last (`by="end"`) event is at or after
    max(Time) - `seconds`; its events of items absent from train are dropped, then its sessions
    shorter than 2. Train keeps every other session unchanged. Either part may be empty.
    """
    if by not in ("start", "end"):
        raise ValueError(f"by must be 'start' or 'end', got {by!r}")
    if not float(seconds) > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return _split(df, float(seconds), by)


def _counts(df: pd.DataFrame) -> dict:
    return {"events": int(len(df)), "sessions": int(df[SESSION].nunique()),
            "items": int(df[ITEM].nunique())}


def _write_splits(full: pd.DataFrame, seconds: float, by: str, out_dir, source: str) -> dict:
    if len(full) == 0:
        raise DataError(f"{source}: no events are left after filtering (sessions >= 2, items >= 5)")
    train, test = _split(full, seconds, by)
    train_tr, train_valid = _split(train, seconds, by)
    parts = {"train_full": train, "test": test, "train_tr": train_tr, "train_valid": train_valid}
    for name, part in parts.items():
        if len(part) == 0:
            raise DataError(f"{source}: the {name} split is empty (the log spans too little time "
                            f"for a {seconds / DAY:g}-day test period)")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for name, part in parts.items():
        part = part.sort_values([SESSION, TIME], kind="stable")
        path = os.path.join(out_dir, f"{name}.tsv")
        part[[SESSION, ITEM, TIME]].to_csv(path, sep="\t", index=False)
        counts[name] = _counts(part)
        logger.info("%s: wrote %s (%d events, %d sessions, %d items)", source, path,
                    counts[name]["events"], counts[name]["sessions"], counts[name]["items"])
    return counts


def _epoch_seconds(path: str, text: pd.Series, what: str, fmt: str | None = "ISO8601") -> pd.Series:
    try:
        stamps = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot parse the {what} column as dates: {exc}") from exc
    bad = stamps.isna()
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} {what} value(s) are not dates, "
                        f"e.g. {text[bad].iloc[0]!r}")
    return (stamps - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(seconds=1)


def _read_csv(path: str, **kwargs) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from exc
    if len(df) == 0:
        raise DataError(f"{path}: the file has no events")
    return df


def preprocess_yoochoose(clicks_path, out_dir) -> dict:
    """RSC15 / YooChoose clicks (`session,timestamp,item,category`, comma-separated, no header,
    ISO timestamps) -> the four TSV splits in `out_dir`; returns {split: {events, sessions, items}}.
    Test = sessions ending in the last day (86,400 s); see the module docstring."""
    path = os.fspath(clicks_path)
    _require_file(path)
    raw = _read_csv(path, sep=",", header=None, usecols=[0, 1, 2], names=[SESSION, "Stamp", ITEM],
                    dtype={"Stamp": str}, low_memory=False)
    for col in (SESSION, ITEM, "Stamp"):
        if raw[col].isna().any():
            raise DataError(f"{path}: column {col} has {int(raw[col].isna().sum())} missing value(s)")
    df = pd.DataFrame({SESSION: _plain_ids(raw[SESSION]), ITEM: _plain_ids(raw[ITEM]),
                       TIME: _epoch_seconds(path, raw["Stamp"], "timestamp")})
    full = _filter_once(df)
    return _write_splits(full, DAY, "end", out_dir, path)


def preprocess_diginetica(views_path, out_dir) -> dict:
    """DIGINETICA item views (`session_id;user_id;item_id;timeframe;eventdate` with a header) ->
    the four TSV splits in `out_dir`; returns {split: {events, sessions, items}}.
    Test = sessions starting in the last 7 days; see the module docstring."""
    path = os.fspath(views_path)
    _require_file(path)
    raw = _read_csv(path, sep=";", low_memory=False)
    need = ["session_id", "item_id", "timeframe", "eventdate"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has columns {list(raw.columns)}")
    for col in need:
        if raw[col].isna().any():
            raise DataError(f"{path}: column {col} has {int(raw[col].isna().sum())} missing value(s)")
    frame = pd.to_numeric(raw["timeframe"], errors="coerce")
    if frame.isna().any():
        raise DataError(f"{path}: column timeframe is not numeric, e.g. "
                        f"{raw['timeframe'][frame.isna()].iloc[0]!r}")
    date = _epoch_seconds(path, raw["eventdate"].astype(str), "eventdate", fmt="%Y-%m-%d")
    df = pd.DataFrame({SESSION: _plain_ids(raw["session_id"]), ITEM: _plain_ids(raw["item_id"]),
                       TIME: date + frame.astype(np.float64) / 1000.0})
    full = _filter_until_stable(df)
    return _write_splits(full, 7 * DAY, "start", out_dir, path)
