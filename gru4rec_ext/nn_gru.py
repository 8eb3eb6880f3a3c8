"""`SessionGRU`: a multi-layer GRU over session-parallel batches with hidden-state resets."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .ops.session_gru import session_gru
from .reference import variant_code

__all__ = ["SessionGRU"]


def _layer_names(num_layers: int) -> tuple:
    """The parameter names of each layer (formatted once, not per forward)."""
    return tuple(tuple(f"{kind}_l{k}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                 for k in range(num_layers))


class SessionGRU(nn.Module):
    """Stacked GRU layers (SPEC section 3) that zero a row's state where `reset` says so.

    Parameters are named and laid out exactly as torch.nn.GRU's (`weight_ih_l{k}` [3H, in],
    `weight_hh_l{k}` [3H, H], `bias_ih_l{k}`, `bias_hh_l{k}` [3H]; gate blocks r, z, n), so with
    variant="cudnn" an nn.GRU state_dict loads unchanged. variant="gru4rec" uses the paper's
    cell in every layer. input_size is the embedding size E, or the number of items N when the
    first layer is fed item ids. Dropout (training only) is applied to each layer's output
    before the next layer, not after the last one, as in nn.GRU.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 variant: str = "cudnn", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SessionGRU: {name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SessionGRU: dropout must be in [0, 1), got {dropout}")
        variant_code(variant)  # validates
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.variant, self.dropout, self.bias = variant, float(dropout), bias
        H = hidden_size
        self._layer_names = _layer_names(num_layers)
        for k in range(num_layers):
            fan_in = input_size if k == 0 else H
            setattr(self, f"weight_ih_l{k}", nn.Parameter(torch.empty(3 * H, fan_in)))
            setattr(self, f"weight_hh_l{k}", nn.Parameter(torch.empty(3 * H, H)))
            if bias:
                setattr(self, f"bias_ih_l{k}", nn.Parameter(torch.empty(3 * H)))
                setattr(self, f"bias_hh_l{k}", nn.Parameter(torch.empty(3 * H)))
            else:
                self.register_parameter(f"bias_ih_l{k}", None)
                self.register_parameter(f"bias_hh_l{k}", None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each [H, in] gate block uniform(-sqrt(6/(in+H)), +) on its own (SPEC section 5); biases 0."""
        H = self.hidden_size
        for name, p in self.named_parameters():
            if name.startswith("weight"):
                for block in p.split(H, 0):
                    bound = math.sqrt(6.0 / (block.shape[0] + block.shape[1]))
                    block.uniform_(-bound, bound)
            else:
                p.zero_()

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_layer_names" not in self.__dict__:  # pickled by a version without it
            self._layer_names = _layer_names(self.num_layers)

    def layer_parameters(self, k: int):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer k (biases None when bias=False)."""
        n_ih, n_hh, n_bih, n_bhh = self._layer_names[k]
        params = self._parameters
        if n_ih in params and n_hh in params and n_bih in params and n_bhh in params:
            return params[n_ih], params[n_hh], params[n_bih], params[n_bhh]  # the fast path
        # A parametrized weight (torch.nn.utils.parametrize) is a property, not in _parameters.
        return getattr(self, n_ih), getattr(self, n_hh), getattr(self, n_bih), getattr(self, n_bhh)

    def forward(self, inputs: torch.Tensor, reset: torch.Tensor, h0: torch.Tensor | None = None):
        """inputs: float [T, B, E] or int64 item ids [T, B]; reset [T, B] (bool or 0/1), zeroing
        a row's state in every layer before that step; h0 [L, B, H] or None (zeros).
        Returns (outputs [T, B, H] of the last layer, h_n [L, B, H])."""
        if inputs.dim() < 2:
            raise ValueError(f"SessionGRU: inputs must be [T, B, E] or item ids [T, B], got shape "
                             f"{list(inputs.shape)}")
        B, L, H = inputs.shape[1], self.num_layers, self.hidden_size
        if h0 is None:
            h0 = self.weight_hh_l0.new_zeros((L, B, H))
        elif list(h0.shape) != [L, B, H]:
            raise ValueError(f"SessionGRU: h0 must have shape [L, B, H] = {[L, B, H]}, got "
                             f"{list(h0.shape)}")
        x = inputs
        last = []
        # Views whose backward is one stack (or, for one layer, a view) rather than one zero-filled
        # [L, B, H] per layer, as h0[k] would give.
        h0_layers = h0.unbind(0) if L > 1 else (h0.squeeze(0),)
        for k in range(L):
            w_ih, w_hh, b_ih, b_hh = self.layer_parameters(k)
            x, h_n = session_gru(x, reset, h0_layers[k], w_ih, w_hh, b_ih, b_hh,
                                 variant=self.variant)
            last.append(h_n)
            if self.dropout > 0.0 and self.training and k < L - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, (torch.stack(last) if L > 1 else last[0].unsqueeze(0))  # one layer: a view

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"variant={self.variant!r}, dropout={self.dropout}, bias={self.bias}")
