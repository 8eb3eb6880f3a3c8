"""Checkpoint and resume of a training run: the trainer's `last.pt` after every epoch.

The checkpoint (`checkpoint.save_checkpoint`) holds the model, the optimizer state, the training
config, the item map, the number of finished epochs and, in `extra`, the random state (torch's
global generator, which draws the dropout masks; the CUDA generator on CUDA; the sampler's
generator and cache position) and the per-epoch history. Resuming restores all of it, so a resumed
run trains to the same weights as an uninterrupted one.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("gru4rec_ext")

CHECKPOINT_NAME = "last.pt"


def rng_state(sampler, device: torch.device) -> dict:
    """The random state a resumed run needs: torch's generator(s) and the sampler's state."""
    state = {"torch": torch.get_rng_state(), "sampler": sampler.state_dict()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_training_checkpoint(checkpoint_dir, model, optimizer, sampler, *, config: dict, item_map, epoch: int,
                             history: list, device: torch.device) -> None:
    """Write `checkpoint_dir/last.pt` after `epoch` finished epochs (atomically)."""
    from .checkpoint import save_checkpoint
    os.makedirs(checkpoint_dir, exist_ok=True)
    save_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_NAME), model, optimizer, config, item_map, epoch,
                    {"rng": rng_state(sampler, device), "history": history})


def resume_training(checkpoint_dir, model, optimizer, sampler, device: torch.device):
    """Load `checkpoint_dir/last.pt` into the model, optimizer, sampler and generators.

    Returns (finished epochs, history list), or None when there is no checkpoint yet.
    """
    from .checkpoint import read_checkpoint
    path = os.path.join(checkpoint_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        logger.info("no checkpoint at %s: starting from epoch 1", path)
        return None
    ckpt = read_checkpoint(path)
    if ckpt["model_config"]["n_items"] != model.n_items:
        raise ValueError(f"checkpoint {path} has {ckpt['model_config']['n_items']} items, the model "
                         f"{model.n_items}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rng = ckpt["extra"]["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    sampler.load_state_dict(rng["sampler"])
    epoch = int(ckpt["epoch"])
    logger.info("resumed from %s after epoch %d", path, epoch)
    return epoch, list(ckpt["extra"].get("history", []))
