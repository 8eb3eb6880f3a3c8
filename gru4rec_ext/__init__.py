"""gru4rec-ext: GRU4Rec session-based recommendations with fused C++/CUDA kernels.

Drop-in parts: `SessionGRU` (a GRU over session-parallel batches with hidden-state reset),
`SampledRankingLoss` / `sampled_ranking_loss` (BPR, TOP1, BPR-max, TOP1-max, cross-entropy over
in-batch and sampled negatives), and the full model `GRU4Rec` with its trainer; `tune` searches
its hyperparameters (Optuna, optional: `pip install 'gru4rec-ext[tune]'`).
"""
from . import _extension
from .checkpoint import load_checkpoint, save_checkpoint
from .model import GRU4Rec
from .nn_gru import SessionGRU
from .nn_loss import SampledRankingLoss
from .ops.sampled_loss import sampled_loss_backward, sampled_loss_forward, sampled_ranking_loss
from .ops.session_gru import session_gru
from .optim import AdagradM
from .presets import PRESETS, get_preset
from .recommend import SessionRecommender
from .reference import session_gru_reference
from .reference_loss import sampled_ranking_loss_reference
from .sampling import PopularitySampler
from .train import Trainer, train
from .tuning import tune

__version__ = "0.1.0"
__all__ = ["SessionGRU", "session_gru", "session_gru_reference", "SampledRankingLoss",
           "sampled_ranking_loss", "sampled_loss_forward", "sampled_loss_backward",
           "sampled_ranking_loss_reference", "GRU4Rec", "Trainer", "train", "AdagradM",
           "PopularitySampler", "SessionRecommender", "save_checkpoint", "load_checkpoint",
           "PRESETS", "get_preset", "tune"]
