"""gru4rec-ext: GRU4Rec session-based recommendations with fused C++/CUDA kernels."""
from . import _extension

__version__ = "0.1.0"
