"""The GRU4Rec model (SPEC sections 3-5): input embedding modes, stacked session GRU layers, output layer.

Parameters:
  Wy [N, H_last], By [N]: the output item table and bias (score r_bj = h_b . Wy[j] + By[j]).
  With `constrained_embedding` the input embedding of an item IS its Wy row; with `embedding > 0`
  a separate table E [N, embedding]; with neither, one-hot input (layer 0's weight_ih is [3H, N]
  and the GRU op takes item ids).
  GRU layer l: weight_ih_l{l} [3H, in], weight_hh_l{l} [3H, H], bias_ih_l{l}, bias_hh_l{l}
  (torch.nn.GRU layout).

The training step itself (sparse output layer, optimizer) lives in `train.py`; this module gives it
the pieces: `input_rows`, `hidden_forward`, `output_layer`, and the evaluation protocol
(`init_hidden`, `step`, `output_layer`, `n_items`) used by `evaluate`.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _extension
from .reference import variant_code

logger = logging.getLogger("gru4rec_ext")

BACKENDS = ("auto", "kernels", "reference")
VARIANTS = ("cudnn", "gru4rec")


def parse_activation(final_activation: str) -> tuple[str, float]:
    """"linear" | "tanh" | "elu" | "elu-<alpha>" -> (activation, elu_alpha)."""
    if not isinstance(final_activation, str):
        raise TypeError(f"final_activation must be a string, got {type(final_activation).__name__}")
    name = final_activation.strip().lower()
    if name in ("linear", "tanh"):
        return name, 1.0
    if name == "elu":
        return "elu", 1.0
    if name.startswith("elu-"):
        try:
            alpha = float(name[4:])
        except ValueError:
            raise ValueError(f"final_activation {final_activation!r}: expected elu-<number>") from None
        return "elu", alpha
    raise ValueError(f"final_activation must be 'linear', 'tanh' or 'elu-<alpha>', got {final_activation!r}")


def resolve_backend(backend: str) -> str:
    """"auto" -> "kernels" when the extension is built, else "reference"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "kernels" if _extension.available() else "reference"
    if backend == "kernels" and not _extension.available():
        raise RuntimeError("backend='kernels' needs the compiled extension gru4rec_ext._C, which did not "
                           f"import ({_extension._IMPORT_ERROR}); build it or use backend='reference'")
    return backend


def gru_function(backend: str):
    """The session GRU op of a resolved backend (kernels: compiled op; reference: pure PyTorch)."""
    if backend == "kernels":
        from .ops.session_gru import session_gru
        return session_gru
    from .reference import session_gru_reference
    return session_gru_reference


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (training): x * (u >= p) / (1 - p), u ~ U[0, 1) from torch's global generator.

    Same distribution as F.dropout, but the mask comes from one vectorised `rand` instead of the
    CPU's per-element `bernoulli_`, which was a visible cost of the small training step.
    """
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * mask


def init_uniform_blocks_(weight: torch.Tensor, n_blocks: int) -> None:
    """uniform(-s, s) per row block, s = sqrt(6 / (rows_per_block + cols)) (the authors' init)."""
    rows = weight.shape[0] // n_blocks
    cols = weight.shape[1]
    sigma = math.sqrt(6.0 / (rows + cols))
    with torch.no_grad():
        weight.uniform_(-sigma, sigma)


class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al.): session-based next-item scores.

    Args:
        n_items: number of items N (indices 0..N-1).
        layers: GRU hidden sizes, one per layer (all equal: the hidden state is one [L, B, H] tensor).
        embedding: size of a separate input embedding (0: none).
        constrained_embedding: input embedding = output table Wy (overrides `embedding`).
        variant: GRU cell, "cudnn" or "gru4rec" (SPEC section 3). None: as the authors, the first
            layer uses "cudnn" when fed an embedding and "gru4rec" for one-hot input; later layers
            "cudnn". An explicit value applies to every layer.
        dropout_p_embed: dropout on the input embedding (training only).
        dropout_p_hidden: dropout on each layer's output (training only); the dropped-out output is
            carried as that layer's hidden state, as the authors do.
        final_activation: "linear", "tanh" or "elu-<alpha>".
        backend: "kernels" (compiled ops), "reference" (pure PyTorch), "auto" (kernels when built).
    """

    def __init__(self, n_items: int, layers=(100,), *, embedding: int = 0, constrained_embedding: bool = True,
                 variant: str | None = None, dropout_p_embed: float = 0.0, dropout_p_hidden: float = 0.0,
                 final_activation: str = "linear", backend: str = "auto"):
        super().__init__()
        if isinstance(layers, int):
            layers = (layers,)
        layers = tuple(int(h) for h in layers)
        if int(n_items) < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if not layers or any(h < 1 for h in layers):
            raise ValueError(f"layers must be positive hidden sizes, got {layers}")
        if len(set(layers)) != 1:
            raise ValueError(f"layers must all have the same size (the hidden state is one [L,B,H] tensor), "
                             f"got {layers}")
        if int(embedding) < 0:
            raise ValueError(f"embedding must be >= 0, got {embedding}")
        for name, p in (("dropout_p_embed", dropout_p_embed), ("dropout_p_hidden", dropout_p_hidden)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
        self.activation, self.elu_alpha = parse_activation(final_activation)
        self.n_items = int(n_items)
        self.layers = layers
        self.hidden_size = layers[-1]
        self.constrained_embedding = bool(constrained_embedding)
        self.embedding = 0 if self.constrained_embedding else int(embedding)
        self.input_mode = "shared" if self.constrained_embedding else ("embedding" if self.embedding else "onehot")
        self.dropout_p_embed = float(dropout_p_embed)
        self.dropout_p_hidden = float(dropout_p_hidden)
        self.final_activation = final_activation
        self.variant = variant
        first = variant or ("gru4rec" if self.input_mode == "onehot" else "cudnn")
        self.variants = tuple([first] + [variant or "cudnn"] * (len(layers) - 1))
        self._variant_codes = tuple(variant_code(v) for v in self.variants)  # the ops' int codes
        self.backend_request = backend
        self.backend = resolve_backend(backend)
        self._gru = gru_function(self.backend)
        self.item_map = None  # set by training / checkpoint loading: labels <-> indices

        n = self.n_items
        self.Wy = nn.Parameter(torch.empty(n, self.hidden_size))
        self.By = nn.Parameter(torch.zeros(n))
        self.E = nn.Parameter(torch.empty(n, self.embedding)) if self.input_mode == "embedding" else None
        in_size = {"shared": self.hidden_size, "embedding": self.embedding, "onehot": n}[self.input_mode]
        for i, h in enumerate(layers):
            setattr(self, f"weight_ih_l{i}", nn.Parameter(torch.empty(3 * h, in_size)))
            setattr(self, f"weight_hh_l{i}", nn.Parameter(torch.empty(3 * h, h)))
            setattr(self, f"bias_ih_l{i}", nn.Parameter(torch.zeros(3 * h)))
            setattr(self, f"bias_hh_l{i}", nn.Parameter(torch.zeros(3 * h)))
            in_size = h
        self.reset_parameters()

    def config(self) -> dict:
        """Constructor arguments (plain values) to rebuild this model."""
        return {"n_items": self.n_items, "layers": list(self.layers), "embedding": self.embedding,
                "constrained_embedding": self.constrained_embedding, "variant": self.variant,
                "dropout_p_embed": self.dropout_p_embed, "dropout_p_hidden": self.dropout_p_hidden,
                "final_activation": self.final_activation, "backend": self.backend_request}

    def reset_parameters(self) -> None:
        """The authors' init: uniform(-s, s) per gate block / table, s = sqrt(6/(fan_in+fan_out)); biases 0."""
        init_uniform_blocks_(self.Wy, 1)
        if self.E is not None:
            init_uniform_blocks_(self.E, 1)
        for i in range(len(self.layers)):
            init_uniform_blocks_(self.gru_weight("weight_ih", i), 3)
            init_uniform_blocks_(self.gru_weight("weight_hh", i), 3)
            with torch.no_grad():
                self.gru_weight("bias_ih", i).zero_()
                self.gru_weight("bias_hh", i).zero_()
        with torch.no_grad():
            self.By.zero_()

    def gru_weight(self, kind: str, layer: int) -> nn.Parameter:
        return getattr(self, f"{kind}_l{layer}")

    def gru_parameters(self) -> dict:
        """{name: parameter} of the GRU layers (the densely updated parameters)."""
        return {f"{k}_l{i}": self.gru_weight(k, i) for i in range(len(self.layers))
                for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def set_backend(self, backend: str) -> None:
        """Switch between "kernels", "reference" and "auto" (the parameters are unchanged)."""
        self.backend_request = backend
        self.backend = resolve_backend(backend)
        self._gru = gru_function(self.backend)

    # ----- pieces of a step -------------------------------------------------------------------
    def input_table(self) -> torch.Tensor | None:
        """The table whose rows feed layer 0 (Wy, E), or None for one-hot input."""
        return {"shared": self.Wy, "embedding": self.E, "onehot": None}[self.input_mode]

    def input_rows(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Layer 0's input for item ids [B]: embedding rows [B, E] (a copy), or the ids for one-hot."""
        table = self.input_table()
        if table is None:
            return item_ids
        return table.detach().index_select(0, item_ids)

    def hidden_forward(self, x: torch.Tensor, reset: torch.Tensor, hidden: torch.Tensor, training: bool):
        """One step through every layer: x [B, E] (or ids [B]), reset [B] bool, hidden [L, B, H].

        Returns (top output [B, H], new hidden [L, B, H]); rows with reset are zeroed before the
        step; in training the embedding and each layer's output pass through dropout and the
        dropped-out output is the layer's new hidden state.
        """
        if training and self.dropout_p_embed > 0 and x.is_floating_point():
            x = dropout(x, self.dropout_p_embed)
        reset1 = reset.unsqueeze(0)
        outs = []
        for i in range(len(self.layers)):
            out, _ = self._gru(x.unsqueeze(0), reset1, hidden[i], self.gru_weight("weight_ih", i),
                               self.gru_weight("weight_hh", i), self.gru_weight("bias_ih", i),
                               self.gru_weight("bias_hh", i), variant=self.variants[i])
            x = out[0]
            if training and self.dropout_p_hidden > 0:
                x = dropout(x, self.dropout_p_hidden)
            outs.append(x)
        return x, torch.stack(outs)

    # ----- evaluation protocol ----------------------------------------------------------------
    def init_hidden(self, batch_size: int, device=None) -> torch.Tensor:
        """Zero hidden state [L, B, H]."""
        return torch.zeros(len(self.layers), int(batch_size), self.hidden_size,
                           device=device if device is not None else self.Wy.device, dtype=self.Wy.dtype)

    @torch.no_grad()
    def step(self, item_ids: torch.Tensor, reset: torch.Tensor, hidden: torch.Tensor):
        """Inference step: item_ids [B] int64, reset [B] bool, hidden [L, B, H] -> (out [B, H], hidden)."""
        if item_ids.dim() != 1:
            raise ValueError(f"item_ids must be [B], got shape {tuple(item_ids.shape)}")
        if reset.shape != item_ids.shape:
            raise ValueError(f"reset must be [B]={tuple(item_ids.shape)}, got {tuple(reset.shape)}")
        if hidden.shape != (len(self.layers), item_ids.shape[0], self.hidden_size):
            raise ValueError(f"hidden must be [L,B,H]=({len(self.layers)}, {item_ids.shape[0]}, "
                             f"{self.hidden_size}), got {tuple(hidden.shape)}")
        x = self.input_rows(item_ids.long())
        return self.hidden_forward(x, reset.bool(), hidden, training=False)

    def output_layer(self):
        """(weight [N, H], bias [N], activation, elu_alpha) of the item scores."""
        return self.Wy, self.By, self.activation, self.elu_alpha

    @torch.no_grad()
    def score(self, out: torch.Tensor) -> torch.Tensor:
        """Scores of every item for top outputs [B, H] -> [B, N] (final activation applied)."""
        r = torch.addmm(self.By, out, self.Wy.t())
        if self.activation == "tanh":
            r = torch.tanh(r)
        elif self.activation == "elu":
            r = F.elu(r, self.elu_alpha)
        return r

    def recommend(self, session_items, k: int = 20, exclude_seen: bool = False):
        """Top-k next items after a session; see `recommend.recommend_session`."""
        from .recommend import recommend_session
        return recommend_session(self, session_items, k=k, exclude_seen=exclude_seen)

    def extra_repr(self) -> str:
        return (f"n_items={self.n_items}, layers={self.layers}, input={self.input_mode}, "
                f"variants={self.variants}, final_activation={self.final_activation!r}, backend={self.backend!r}")
