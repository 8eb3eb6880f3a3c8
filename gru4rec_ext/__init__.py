"""gru4rec-ext: GRU4Rec session-based recommendations with fused C++/CUDA kernels."""
from . import _extension
from .checkpoint import load_checkpoint, save_checkpoint
from .model import GRU4Rec
from .optim import AdagradM
from .presets import PRESETS, get_preset
from .recommend import SessionRecommender
from .sampling import PopularitySampler
from .train import Trainer, train

__version__ = "0.1.0"
__all__ = ["GRU4Rec", "Trainer", "train", "AdagradM", "PopularitySampler", "SessionRecommender",
           "save_checkpoint", "load_checkpoint", "PRESETS", "get_preset"]
