"""Event logs: reading them, mapping item labels to indices, and grouping events into sessions.

SPEC section 1. An event log is a table of (session id, item id, time). `read_events` reads it from
TSV/CSV (optionally .gz/.xz/.bz2 compressed) or Parquet into a DataFrame with exactly the columns
`SessionId`, `ItemId`, `Time`; `ItemMap` maps item labels to 0..N-1; `SessionData` holds the
events grouped into sessions, in training order, as flat index arrays.

Every problem with the input is a `DataError` (a ValueError) whose message names the file.
"""
from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import warnings
from typing import Iterable

import numpy as np
import pandas as pd

logger = logging.getLogger("gru4rec_ext")

SESSION, ITEM, TIME = "SessionId", "ItemId", "Time"
COLUMNS = (SESSION, ITEM, TIME)

_COMPRESSION = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
_SEP_BY_EXT = {".tsv": "\t", ".tab": "\t", ".csv": ",", ".txt": "\t"}
_SEP_CANDIDATES = ("\t", ",", ";", "|")


class DataError(ValueError):
    """Bad input data: the message names the file (or data set) and the problem."""


# ----------------------------------------------------------------------------------------------
# reading


def _split_ext(path: str) -> tuple[str, str]:
    """(format extension, compression extension) of a file name, both lower case, '' if none."""
    base, ext = os.path.splitext(path.lower())
    comp = ""
    if ext in _COMPRESSION:
        comp = ext
        base, ext = os.path.splitext(base)
    return ext, comp


def _first_line(path: str, comp: str) -> str:
    opener = _COMPRESSION.get(comp, open)
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line
    return ""


def _detect_sep(path: str, ext: str, comp: str) -> str:
    """The separator of a text table: the extension's if its header line has it, else the most
    frequent of tab, comma, semicolon, pipe in the header line (tab when it has none)."""
    line = _first_line(path, comp)
    if not line:
        raise DataError(f"{path}: the file is empty")
    preferred = _SEP_BY_EXT.get(ext)
    if preferred is not None and preferred in line:
        return preferred
    counts = {sep: line.count(sep) for sep in _SEP_CANDIDATES}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else (preferred or "\t")


def _read_table(path: str, keys: list[str], sep: str | None) -> pd.DataFrame:
    ext, comp = _split_ext(path)
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow): {exc}") from exc
        try:
            present = list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises its own error types for corrupt files
            raise DataError(f"{path}: cannot read the file as Parquet: {exc}") from exc
        _check_columns(path, keys, present)
        try:
            return pd.read_parquet(path, columns=keys)
        except Exception as exc:
            raise DataError(f"{path}: cannot read the file as Parquet: {exc}") from exc
    try:
        if sep is None:
            sep = _detect_sep(path, ext, comp)
        header = pd.read_csv(path, sep=sep, nrows=0)
        present = [str(c) for c in header.columns]
        _check_columns(path, keys, present)
        return pd.read_csv(path, sep=sep, usecols=keys, low_memory=False)
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, lzma.LZMAError,
            ValueError) as exc:
        raise DataError(f"{path}: cannot read the file as a {sep!r}-separated table: {exc}") from exc


def _check_columns(path: str, keys: list[str], present: list[str]) -> None:
    missing = [k for k in keys if k not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has columns {present}")


def _time_to_seconds(path: str, column: pd.Series, key: str) -> pd.Series:
    """A time column as float64 seconds: numbers as they are, date-time strings as epoch seconds."""
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{path}: column {key!r} (time) holds booleans, not times")
    if pd.api.types.is_numeric_dtype(column):
        out = column.astype(np.float64)
    elif pd.api.types.is_datetime64_any_dtype(column):
        out = _datetime_seconds(column)
    else:
        numeric = pd.to_numeric(column, errors="coerce")
        if not (numeric.isna() & column.notna()).any():
            out = numeric.astype(np.float64)
        else:
            out = _parse_datetimes(path, column, key)
    if out.isna().any():
        bad = int(out.isna().sum())
        raise DataError(f"{path}: column {key!r} (time) has {bad} missing (NaN) value(s)")
    if not np.isfinite(out.to_numpy()).all():
        raise DataError(f"{path}: column {key!r} (time) has infinite value(s)")
    return out


def _datetime_seconds(column: pd.Series) -> pd.Series:
    if getattr(column.dt, "tz", None) is None:
        column = column.dt.tz_localize("UTC")
    seconds = (column - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.astype(np.float64)


def _parse_datetimes(path: str, column: pd.Series, key: str) -> pd.Series:
    text = column.astype("string")
    parsed = None
    for fmt in ("ISO8601", None):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
        except (ValueError, TypeError):
            continue
        if not (parsed.isna() & column.notna()).any():
            break
    bad = column.notna() if parsed is None else (parsed.isna() & column.notna())
    if bad.any():
        not_numbers = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        examples = pd.unique(column[not_numbers]).tolist()[:3]
        raise DataError(f"{path}: column {key!r} (time) is not numeric and not a date-time: "
                        f"{int(not_numbers.sum())} value(s) are not numbers, e.g. {examples}")
    return _datetime_seconds(parsed)


def read_events(path, session_key: str = SESSION, item_key: str = ITEM, time_key: str = TIME,
                sep: str | None = None) -> pd.DataFrame:
    """Reads an event log into a DataFrame with exactly the columns SessionId, ItemId, Time.

    Formats: tab/comma/semicolon-separated text with a header line (.tsv/.csv/.txt, optionally
    .gz/.xz/.bz2 compressed; `sep=None` takes the separator from the extension and the header
    line) and Parquet (.parquet, needs pyarrow). The columns `session_key`, `item_key`,
    `time_key` are renamed to SessionId, ItemId, Time. Session and item ids keep their type as
    read (integers stay int64, strings stay str). Time becomes float64 seconds; a date-time
    string column is converted to epoch seconds (UTC). Row order is kept.

    Raises DataError (naming the file) when the file is missing, unreadable or empty, a column is
    missing, a session or item id is missing (NaN), or a time is missing or not a number/date.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not an event file")
    keys = [session_key, item_key, time_key]
    if len(set(keys)) != 3:
        raise DataError(f"{path}: session_key, item_key and time_key must differ, got {keys}")
    df = _read_table(path, keys, sep)
    if len(df) == 0:
        raise DataError(f"{path}: the file has no events (only a header)")
    for key, what in ((session_key, "session"), (item_key, "item")):
        n_bad = int(df[key].isna().sum())
        if n_bad:
            raise DataError(f"{path}: column {key!r} ({what} id) has {n_bad} missing (NaN) value(s)")
    out = pd.DataFrame({
        SESSION: _plain_ids(df[session_key]),
        ITEM: _plain_ids(df[item_key]),
        TIME: _time_to_seconds(path, df[time_key], time_key),
    })
    logger.info("read %d events of %d sessions from %s", len(out), out[SESSION].nunique(), path)
    return out.reset_index(drop=True)


def _plain_ids(column: pd.Series) -> pd.Series:
    """Ids as int64 when integral numbers, as str otherwise (pandas' nullable/string types undone)."""
    if pd.api.types.is_integer_dtype(column):
        return column.astype(np.int64)
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy()
        if np.all(values == np.round(values)) and np.abs(values).max() < 2 ** 53:
            return column.astype(np.int64)
        return column.astype(str).astype(object)
    return column.astype(str).astype(object)


# ----------------------------------------------------------------------------------------------
# item map


def _as_label_array(labels) -> np.ndarray:
    if isinstance(labels, (pd.Series, pd.Index)):
        return labels.to_numpy()
    if hasattr(labels, "detach"):  # a torch tensor
        return labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        return labels
    return np.asarray(list(labels))


class ItemMap:
    """Item labels <-> indices 0..N-1, in sorted label order (deterministic for a set of labels)."""

    def __init__(self, labels):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels: expected a 1-D array, got shape {labels.shape}")
        if labels.dtype.kind in "US":
            labels = labels.astype(object)
        if len(pd.unique(labels)) != len(labels):
            raise ValueError("labels: item labels must be unique")
        self._labels = labels
        self._index = pd.Index(labels)

    @classmethod
    def fit(cls, item_ids: Iterable) -> "ItemMap":
        """The map of the sorted unique labels in `item_ids` (ints stay ints, others become str)."""
        values = _as_label_array(item_ids)
        if values.dtype.kind == "f":
            if np.isnan(values).any():
                raise ValueError("item_ids: has NaN labels")
            integral = np.all(values == np.round(values))
            values = values.astype(np.int64) if integral else values.astype(str).astype(object)
        elif values.dtype.kind == "b":
            raise TypeError("item_ids: booleans are not item labels")
        elif values.dtype.kind not in "iu":
            if pd.isna(values).any():
                raise ValueError("item_ids: has missing (None/NaN) labels")
            if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
                values = values.astype(np.int64)
            else:
                values = values.astype(str).astype(object)
        if len(values) == 0:
            raise ValueError("item_ids: no items to fit the map on")
        return cls(np.sort(pd.unique(values)))

    @property
    def n_items(self) -> int:
        return len(self._labels)

    def __len__(self) -> int:
        return self.n_items

    @property
    def labels(self) -> np.ndarray:
        """The labels in index order."""
        return self._labels

    def __eq__(self, other) -> bool:
        return isinstance(other, ItemMap) and self._labels.dtype.kind == other._labels.dtype.kind \
            and np.array_equal(self._labels, other._labels)

    def __repr__(self) -> str:
        return f"ItemMap(n_items={self.n_items})"

    def _query(self, labels) -> np.ndarray:
        values = np.asarray(_as_label_array(labels) if not np.isscalar(labels) else [labels])
        if values.ndim == 0:
            values = values.reshape(1)
        mine = self._labels.dtype.kind
        if values.dtype.kind in "US":
            values = values.astype(object)
        if mine == "O" and values.dtype.kind in "iuf":
            values = np.array([str(int(v)) if float(v).is_integer() else str(v) for v in values.ravel()],
                              dtype=object).reshape(values.shape)
        elif mine in "iu" and values.dtype.kind == "O":
            values = values.astype(str).astype(object)
            return self._str_index().get_indexer(values.ravel()).reshape(values.shape)
        return self._index.get_indexer(values.ravel()).reshape(values.shape)

    def _str_index(self) -> pd.Index:
        if not hasattr(self, "_as_str"):
            self._as_str = pd.Index(self._labels.astype(str).astype(object))
        return self._as_str

    def encode(self, labels) -> np.ndarray:
        """int64 indices of `labels` (same shape); -1 for labels not in the map."""
        return np.asarray(self._query(labels), dtype=np.int64)

    def decode(self, indices) -> np.ndarray:
        """The labels of `indices` (an int array or tensor; same shape)."""
        if hasattr(indices, "detach"):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices: expected integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise ValueError(f"indices: out of range [0, {self.n_items})")
        return self._labels[idx]

    def state_dict(self) -> dict:
        """Plain Python lists/str, so torch.save / torch.load(weights_only=True) round-trip it."""
        kind = "int" if self._labels.dtype.kind in "iu" else "str"
        return {"kind": kind, "labels": [int(v) if kind == "int" else str(v) for v in self._labels]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ItemMap":
        if not isinstance(state, dict) or "labels" not in state:
            raise ValueError("state: expected a dict with 'labels' (from ItemMap.state_dict())")
        kind = state.get("kind", "int")
        if kind == "int":
            return cls(np.asarray(state["labels"], dtype=np.int64))
        if kind == "str":
            return cls(np.asarray([str(v) for v in state["labels"]], dtype=object))
        raise ValueError(f"state: unknown label kind {kind!r}")


# ----------------------------------------------------------------------------------------------
# sessions


class SessionData:
    """Events grouped into sessions, in training order (SPEC section 1).

    Sessions are ordered by (session start time, session id); the events of a session by time
    (ties keep file order). Session s holds events `items[offsets[s]:offsets[s + 1]]`.

    Attributes: items int64 [n_events] item indices, offsets int64 [n_sessions + 1], session_ids
    [n_sessions] original labels, times float64 [n_events], item_map, name, n_events, n_sessions,
    n_pairs (= n_events - n_sessions: the (item, next item) pairs).
    """

    def __init__(self, items, offsets, session_ids, item_map: ItemMap, *, times=None,
                 name: str = "<data>"):
        self.items = np.ascontiguousarray(items, dtype=np.int64)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.session_ids = np.asarray(session_ids)
        self.times = None if times is None else np.ascontiguousarray(times, dtype=np.float64)
        self.item_map = item_map
        self.name = name
        if self.items.ndim != 1 or self.offsets.ndim != 1 or len(self.offsets) < 1:
            raise ValueError(f"{name}: items and offsets must be 1-D (offsets non-empty)")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.items) or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"{name}: offsets must rise from 0 to n_events")
        if len(self.session_ids) != len(self.offsets) - 1:
            raise ValueError(f"{name}: session_ids has {len(self.session_ids)} entries, "
                             f"offsets say {len(self.offsets) - 1} sessions")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= item_map.n_items):
            raise ValueError(f"{name}: item indices out of range [0, {item_map.n_items})")

    @classmethod
    def from_events(cls, df: pd.DataFrame, item_map: ItemMap, *, drop_unknown: bool = False,
                    min_session_length: int = 2, name: str = "<events>") -> "SessionData":
        """Sessions of an event table (columns SessionId, ItemId, Time, as `read_events` gives).

        Items are encoded with `item_map`. Events of unknown items are dropped when
        `drop_unknown` (their session's pairs bridge over them; SPEC section 1), else they raise
        DataError. Then sessions shorter than `min_session_length` are dropped. DataError (naming
        `name`) when no session is left.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
        if not isinstance(item_map, ItemMap):
            raise TypeError(f"item_map: expected an ItemMap, got {type(item_map).__name__}")
        if int(min_session_length) < 1:
            raise ValueError(f"min_session_length: must be >= 1, got {min_session_length}")
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing}; the data has columns "
                            f"{[str(c) for c in df.columns]}")
        if len(df) == 0:
            raise DataError(f"{name}: no events")
        for col in (SESSION, ITEM, TIME):
            if df[col].isna().any():
                raise DataError(f"{name}: column {col!r} has {int(df[col].isna().sum())} missing (NaN) value(s)")
        if not pd.api.types.is_numeric_dtype(df[TIME]) or pd.api.types.is_bool_dtype(df[TIME]):
            raise DataError(f"{name}: column 'Time' must be numeric (use read_events to convert dates)")

        items = item_map.encode(df[ITEM])
        times = df[TIME].to_numpy(dtype=np.float64)
        sess_codes, sess_labels = pd.factorize(df[SESSION], sort=True)
        unknown = items < 0
        if unknown.any():
            n_unknown = int(unknown.sum())
            if not drop_unknown:
                examples = pd.unique(df[ITEM].to_numpy()[unknown])[:5].tolist()
                raise DataError(f"{name}: {n_unknown} event(s) have items not in the item map "
                                f"(e.g. {examples}); pass drop_unknown=True to drop them")
            logger.info("%s: dropped %d of %d events whose items are not in the item map",
                        name, n_unknown, len(items))
            keep = ~unknown
            items, times, sess_codes = items[keep], times[keep], sess_codes[keep]
        if len(items) == 0:
            raise DataError(f"{name}: no event has an item of the item map (all {len(df)} unknown)")

        # session start time, then order by (start, session id, time, file position)
        n_codes = len(sess_labels)
        start = np.full(n_codes, np.inf)
        np.minimum.at(start, sess_codes, times)
        order = np.lexsort((np.arange(len(items)), times, sess_codes, start[sess_codes]))
        items, times, sess_codes = items[order], times[order], sess_codes[order]

        bounds = np.flatnonzero(np.diff(sess_codes)) + 1
        offsets = np.concatenate(([0], bounds, [len(items)])).astype(np.int64)
        lengths = np.diff(offsets)
        keep_sess = lengths >= int(min_session_length)
        if not keep_sess.all():
            logger.info("%s: dropped %d session(s) shorter than %d", name,
                        int((~keep_sess).sum()), min_session_length)
            keep_ev = np.repeat(keep_sess, lengths)
            items, times, sess_codes = items[keep_ev], times[keep_ev], sess_codes[keep_ev]
            lengths = lengths[keep_sess]
            offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        if len(lengths) == 0:
            raise DataError(f"{name}: no session with at least {min_session_length} events "
                            f"{'of known items ' if unknown.any() else ''}is left")
        session_ids = np.asarray(sess_labels)[sess_codes[offsets[:-1]]]
        return cls(items, offsets, session_ids, item_map, times=times, name=name)

    @classmethod
    def from_file(cls, path, item_map: ItemMap | None = None, *, drop_unknown: bool = False,
                  min_session_length: int = 2, session_key: str = SESSION, item_key: str = ITEM,
                  time_key: str = TIME, sep: str | None = None) -> "SessionData":
        """`read_events` then `from_events`; with `item_map=None` the map is fit on this file."""
        df = read_events(path, session_key=session_key, item_key=item_key, time_key=time_key, sep=sep)
        if item_map is None:
            item_map = ItemMap.fit(df[ITEM])
        return cls.from_events(df, item_map, drop_unknown=drop_unknown,
                               min_session_length=min_session_length, name=os.fspath(path))

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_pairs(self) -> int:
        return self.n_events - self.n_sessions

    @property
    def n_items(self) -> int:
        return self.item_map.n_items

    def session_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item_counts(self) -> np.ndarray:
        """int64 [n_items]: events per item (the training popularity for sampling and logq)."""
        return np.bincount(self.items, minlength=self.item_map.n_items).astype(np.int64)

    def __repr__(self) -> str:
        return (f"SessionData({self.name!r}: {self.n_events} events, {self.n_sessions} sessions, "
                f"{self.n_items} items)")
