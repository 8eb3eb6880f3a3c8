"""The data of a tuning run: training sessions and validation sessions, never the test file.

With a validation file, TRAIN trains and the file validates (its items unknown to TRAIN dropped,
then its sessions shorter than 2). Without one, TRAIN is split by time the published way
(`preprocess.split_by_time`, by session start): the sessions that START in the last `valid_days`
days of TRAIN (at or after max(Time) - valid_days * 86,400 s) validate, every other session trains;
validation events of items the training part lacks are dropped, then validation sessions shorter
than 2. The item map is fit on the training part.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pandas as pd

from ..data import ITEM, SESSION, TIME, DataError, ItemMap, SessionData, read_events
from ..preprocess import DAY, split_by_time

logger = logging.getLogger("gru4rec_ext")


@dataclass
class TuningData:
    """`full`: every TRAIN event (what --retrain trains on); `train` / `valid`: the trials' data."""
    full: pd.DataFrame
    train: SessionData
    valid: SessionData
    info: dict


def _events(source, what: str, keys: dict) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        missing = [c for c in (SESSION, ITEM, TIME) if c not in source.columns]
        if missing:
            raise DataError(f"{what}: the DataFrame lacks column(s) {missing} (use read_events)")
        return source
    return read_events(os.fspath(source), **keys)


def _stats(data: SessionData) -> dict:
    return {"events": data.n_events, "sessions": data.n_sessions, "cases": data.n_pairs}


def load_tuning_data(train, valid=None, valid_days: float = 1.0, session_key: str = SESSION,
                     item_key: str = ITEM, time_key: str = TIME) -> TuningData:
    """Read TRAIN (a path or an events DataFrame) and make the validation data (module docstring)."""
    keys = dict(session_key=session_key, item_key=item_key, time_key=time_key)
    train_name = train if not isinstance(train, pd.DataFrame) else "<train events>"
    full = _events(train, "train", keys)
    if valid is not None:
        train_df = full
        valid_df = _events(valid, "valid", keys)
        valid_name = valid if not isinstance(valid, pd.DataFrame) else "<validation events>"
        info = {"source": "file", "valid": str(valid_name)}
    else:
        if not float(valid_days) > 0:
            raise ValueError(f"valid_days must be > 0, got {valid_days}")
        cut = float(full[TIME].max()) - float(valid_days) * DAY
        train_df, valid_df = split_by_time(full, float(valid_days) * DAY, by="start")
        info = {"source": "time split", "valid_days": float(valid_days), "cut_time": cut}
        if len(train_df) == 0:
            raise DataError(f"{train_name}: every session starts in the last {valid_days:g} day(s): nothing is left "
                            "to train on; give a smaller --valid-days or a --valid file")
        if len(valid_df) == 0:
            starts = full.groupby(SESSION)[TIME].min()
            n_late = int((starts >= cut).sum())
            why = ("no session starts there" if n_late == 0 else
                   f"{n_late} session(s) start there, but none keeps 2 events of items seen in the training part")
            raise DataError(f"{train_name}: the validation split is empty: {why} (the last {valid_days:g} day(s), "
                            f"Time >= {cut:.0f}); give a larger --valid-days or a --valid file")
        valid_name = f"{train_name} (last {valid_days:g} day(s))"
    item_map = ItemMap.fit(train_df[ITEM])
    train_data = SessionData.from_events(train_df, item_map, name=f"{train_name} (training part)"
                                         if valid is None else str(train_name))
    try:
        valid_data = SessionData.from_events(valid_df, item_map, drop_unknown=True, name=str(valid_name))
    except DataError as exc:
        raise DataError(f"the validation split is empty: {exc}") from None
    info.update(train=_stats(train_data), valid=_stats(valid_data))
    logger.info("tuning data: train %d events / %d sessions, validation %d events / %d sessions (%s)",
                train_data.n_events, train_data.n_sessions, valid_data.n_events, valid_data.n_sessions,
                info["source"])
    return TuningData(full, train_data, valid_data, info)


def full_training_data(data: TuningData) -> SessionData:
    """All of TRAIN as SessionData with its own item map (what --retrain trains on)."""
    item_map = ItemMap.fit(data.full[ITEM])
    return SessionData.from_events(data.full, item_map, name=str(data.full.attrs.get("source", "<train>")))
