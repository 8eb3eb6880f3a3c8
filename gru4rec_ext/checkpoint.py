"""Checkpoints: atomic save and load of a GRU4Rec model with its optimizer state, config and item map.

A checkpoint holds only tensors and plain Python containers, so `torch.load(path, weights_only=True)`
reads it. It is written to a temporary file in the same folder, fsynced, then `os.replace`d over
the target, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import NamedTuple

import torch

from .model import GRU4Rec

logger = logging.getLogger("gru4rec_ext")

FORMAT_VERSION = 1


class LoadedCheckpoint(NamedTuple):
    model: GRU4Rec
    optimizer_state: dict | None
    config: dict
    item_map: object
    epoch: int


def _item_map_state(item_map):
    if item_map is None:
        return None
    state = item_map.state_dict() if hasattr(item_map, "state_dict") else item_map
    return _plain(state)


def _plain(obj):
    """Convert numpy values/arrays to plain Python / tensors so weights_only loading accepts them."""
    import numpy as np
    if isinstance(obj, dict):
        return {(_plain(k) if not isinstance(k, str) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return torch.from_numpy(obj.copy())
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint(path, model: GRU4Rec, optimizer=None, config: dict | None = None, item_map=None,
                    epoch: int = 0, extra: dict | None = None) -> None:
    """Write a checkpoint atomically to `path` (tmp file in the same folder, fsync, os.replace)."""
    if not isinstance(model, GRU4Rec):
        raise TypeError(f"model must be a GRU4Rec, got {type(model).__name__}")
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": model.config(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "config": _plain(dict(config or {})),
        "item_map": _item_map_state(item_map if item_map is not None else model.item_map),
        "epoch": int(epoch),
        "extra": _plain(dict(extra or {})),
    }
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("saved checkpoint %s (epoch %d)", path, epoch)


def read_checkpoint(path) -> dict:
    """The raw checkpoint dict (loaded with weights_only=True on the CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path!r} could not be read: {exc}") from exc
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"checkpoint {path!r} is not a gru4rec_ext checkpoint")
    return ckpt


def load_item_map(state):
    """Rebuild the data module's ItemMap from its saved state (None stays None)."""
    if state is None:
        return None
    from .data import ItemMap
    return ItemMap.from_state_dict(state)


def load_checkpoint(path, device=None, backend: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint -> (model, optimizer state, config, item_map, epoch).

    The model is rebuilt from the saved constructor arguments (backend: given, else "auto"), moved to
    `device` (default CPU), set to eval mode, and given its item map (`model.item_map`).
    """
    ckpt = read_checkpoint(path)
    mcfg = dict(ckpt["model_config"])
    n_items = mcfg.pop("n_items")
    mcfg["backend"] = backend or "auto"  # the saving machine's backend may not exist here
    model = GRU4Rec(n_items, **mcfg)
    model.load_state_dict(ckpt["model"])
    model.to(torch.device(device) if device is not None else torch.device("cpu"))
    model.eval()
    item_map = load_item_map(ckpt.get("item_map"))
    model.item_map = item_map
    return LoadedCheckpoint(model, ckpt.get("optimizer"), dict(ckpt.get("config") or {}), item_map,
                            int(ckpt.get("epoch", 0)))
