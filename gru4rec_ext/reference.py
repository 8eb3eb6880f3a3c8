"""Pure-PyTorch references of the package's ops, written for clarity, not speed (SPEC sections 3, 4).

The compiled kernels are tested against these, and the ops fall back to them on devices without
a kernel.
"""
from __future__ import annotations

import torch

# --- session GRU ---

VARIANTS = {"cudnn": 0, "gru4rec": 1}


def variant_code(variant) -> int:
    """The op's integer code of a GRU variant: "cudnn" -> 0, "gru4rec" -> 1 (0 and 1 pass through)."""
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"session_gru: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        return VARIANTS[variant]
    if isinstance(variant, int) and not isinstance(variant, bool) and variant in (0, 1):
        return variant
    raise ValueError(f"session_gru: variant must be 'cudnn' or 'gru4rec', got {variant!r}")


def as_reset_mask(reset: torch.Tensor) -> torch.Tensor:
    """The reset mask as bool: accepts bool, or 0/1 integers or floats (nonzero means reset)."""
    if not isinstance(reset, torch.Tensor):
        raise TypeError(f"session_gru: reset must be a tensor [T, B], got {type(reset).__name__}")
    return reset if reset.dtype == torch.bool else reset != 0


def session_gru_reference(input, reset, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
                          variant="cudnn"):
    """GRU over T steps of a session-parallel batch, with plain differentiable PyTorch ops.

    input: float [T, B, E], or int64 item ids [T, B] (one-hot input: x W_ih^T is column `id` of
    weight_ih [3H, N]). reset [T, B] (bool or 0/1): rows whose hidden state is zeroed before that
    step. h0 [B, H]. Weights in nn.GRU layout, gate blocks r, z, n/c: weight_ih [3H, E],
    weight_hh [3H, H], bias_ih / bias_hh [3H] or None. variant "cudnn" (torch.nn.GRU) or
    "gru4rec" (the paper's cell, U_c multiplies r * h). Returns (output [T, B, H], h_n [B, H]).
    """
    code = variant_code(variant)
    reset = as_reset_mask(reset)
    H = weight_hh.shape[1]
    if input.dtype == torch.long:
        gi_all = weight_ih.t()[input]  # [T, B, 3H]: the columns of the items
    else:
        gi_all = torch.matmul(input, weight_ih.t())
    if bias_ih is not None:
        gi_all = gi_all + bias_ih
    b_hh = bias_hh if bias_hh is not None else weight_hh.new_zeros(3 * H)
    w_hr, w_hz, w_hc = weight_hh.split(H, 0)
    b_hr, b_hz, b_hc = b_hh.split(H)
    h = h0
    outputs = []
    for t in range(gi_all.shape[0]):
        h = torch.where(reset[t].unsqueeze(1), torch.zeros_like(h), h)
        gi_r, gi_z, gi_n = gi_all[t].split(H, 1)
        if code == 0:  # cudnn: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1-z) n + z h
            r = torch.sigmoid(gi_r + h @ w_hr.t() + b_hr)
            z = torch.sigmoid(gi_z + h @ w_hz.t() + b_hz)
            n = torch.tanh(gi_n + r * (h @ w_hc.t() + b_hc))
            h = (1 - z) * n + z * h
        else:  # gru4rec: c = tanh(W_c x + U_c (r * h) + b_c); h' = (1-z) h + z c
            r = torch.sigmoid(gi_r + h @ w_hr.t() + b_hr)
            z = torch.sigmoid(gi_z + h @ w_hz.t() + b_hz)
            c = torch.tanh(gi_n + (r * h) @ w_hc.t() + b_hc)
            h = (1 - z) * h + z * c
        outputs.append(h)
    return torch.stack(outputs), h
