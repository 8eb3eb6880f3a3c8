"""`session_gru`: the GRU over T steps of a session-parallel batch (SPEC section 3), differentiable.

Where the extension has a kernel for the device it runs `torch.ops.gru4rec.session_gru`, whose
autograd is a C++ autograd Function (csrc/session_gru_autograd.cpp) over the fused ops
`session_gru_forward` / `session_gru_backward`; elsewhere `session_gru_reference` (the fallback
is logged once). This module registers the fake (meta) kernels of the three ops, so
`torch.compile(fullgraph=True)` traces through them, and keeps a Python autograd formula on
`session_gru_forward` for callers of that op; when the extension is not built, nothing is
registered and the reference runs.
"""
from __future__ import annotations

import torch

from .. import _extension
from ..reference import as_reset_mask, session_gru_reference, variant_code

__all__ = ["session_gru"]

_FORWARD = "gru4rec::session_gru_forward"
_BACKWARD = "gru4rec::session_gru_backward"
_DIFFERENTIABLE = "gru4rec::session_gru"
# torch.ops.gru4rec.session_gru.default (set when the extension is built).
_SESSION_GRU = torch.ops.gru4rec.session_gru.default if _extension.available() else None


_kernel_cache: dict[str, bool] = {}


@torch.compiler.assume_constant_result  # torch.compile: asked while tracing, a constant in the graph
def _kernel_for(device_type: str) -> bool:
    """Whether the compiled op runs on this device type (asked once per type, then cached)."""
    use = _kernel_cache.get(device_type)
    if use is None:
        use = _kernel_cache[device_type] = _extension.use_kernel(
            "session_gru_forward", torch.device(device_type))
    return use


def session_gru(input, reset, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
                variant="cudnn"):
    """GRU over T steps of a session-parallel batch: returns (output [T, B, H], h_n [B, H]).

    input: float [T, B, E], or int64 item ids [T, B] (one-hot input: the input product is the
    column `id` of weight_ih [3H, N], never a materialised one-hot). reset [T, B], bool or 0/1
    ints/floats: rows whose hidden state is zeroed before that step. h0 [B, H]. Weights in
    nn.GRU layout (gate blocks r, z, n/c): weight_ih [3H, E], weight_hh [3H, H], bias_ih and
    bias_hh [3H] or None. variant: "cudnn" (torch.nn.GRU's cell) or "gru4rec" (the paper's cell).
    Inputs are T-major; a single step is T = 1. Gradients flow to input (float input only), h0,
    the weights and the biases (the weight_ih gradient of id input is dense [3H, N]); they are
    not differentiable again (double backward raises). Bad arguments raise errors naming the
    argument.
    """
    code = variant_code(variant)
    for name, t in (("input", input), ("h0", h0), ("weight_ih", weight_ih),
                    ("weight_hh", weight_hh)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"session_gru: {name} must be a tensor, got {type(t).__name__}")
    reset = as_reset_mask(reset)
    if _kernel_for(weight_hh.device.type):
        # The overload itself, every argument positional: no schema defaults filled in Python.
        return _SESSION_GRU(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, code)
    return session_gru_reference(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, code)


# --- checks of the fake kernels (mirror csrc/session_gru.cpp, which checks the real calls) ---

# The dtypes the kernels are compiled for (half and float8 are refused, naming weight_hh).
KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    """The forward's workspace dtype for a model of `dtype`: float32 for bfloat16, else `dtype`."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _check_forward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant):
    if variant not in (0, 1):
        raise ValueError(f"session_gru: variant must be 0 (cudnn) or 1 (gru4rec), got {variant}")
    if weight_hh.dtype not in KERNEL_DTYPES:
        raise TypeError(f"session_gru: weight_hh has dtype {weight_hh.dtype}; the kernels support "
                        "float32, float64 and bfloat16 (not half or float8): convert the model")
    named = [("input", input), ("reset", reset), ("h0", h0), ("weight_ih", weight_ih)]
    named += [(n, b) for n, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)) if b is not None]
    for name, t in named:
        if t.device != weight_hh.device:
            raise ValueError(f"session_gru: {name} is on {t.device} but weight_hh is on "
                             f"{weight_hh.device}; all tensors must be on one device")
    ids = input.dtype == torch.long
    if not ids and not input.is_floating_point():
        raise TypeError("session_gru: input must be float embeddings [T,B,E] or int64 item ids "
                        f"[T,B], got dtype {input.dtype}")
    for name, t in [(n, t) for n, t in named if n != "reset" and not (n == "input" and ids)]:
        if t.dtype != weight_hh.dtype:
            raise TypeError(f"session_gru: {name} has dtype {t.dtype} but weight_hh has dtype "
                            f"{weight_hh.dtype}")
    if reset.dtype != torch.bool:
        raise TypeError(f"session_gru: reset must be a bool tensor [T,B], got dtype {reset.dtype}")
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 3 * weight_hh.shape[1]:
        raise ValueError(f"session_gru: weight_hh must have shape [3*H, H], got {list(weight_hh.shape)}")
    H = weight_hh.shape[1]
    if input.dim() != (2 if ids else 3):
        raise ValueError(f"session_gru: input must have shape {'[T, B]' if ids else '[T, B, E]'}, "
                         f"got {list(input.shape)}")
    T, B = input.shape[0], input.shape[1]
    if weight_ih.dim() != 2 or weight_ih.shape[0] != 3 * H or \
            (not ids and weight_ih.shape[1] != input.shape[2]):
        raise ValueError(f"session_gru: weight_ih must have shape [3*H, {'N' if ids else 'E'}], "
                         f"got {list(weight_ih.shape)}")
    if list(h0.shape) != [B, H]:
        raise ValueError(f"session_gru: h0 must have shape [B, H] = {[B, H]}, got {list(h0.shape)}")
    if list(reset.shape) != [T, B]:
        raise ValueError(f"session_gru: reset must have shape [T, B] = {[T, B]}, got {list(reset.shape)}")
    for name, b in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if b is not None and list(b.shape) != [3 * H]:
            raise ValueError(f"session_gru: {name} must have shape [3*H] = [{3 * H}], got {list(b.shape)}")
    return T, B, H


def _register() -> None:
    @torch.library.register_fake(_FORWARD)
    def _forward_fake(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant):
        T, B, H = _check_forward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant)
        return (weight_hh.new_empty((T, B, H)), weight_hh.new_empty((B, H)),
                weight_hh.new_empty((T, B, 4 * H), dtype=workspace_dtype(weight_hh.dtype)))

    @torch.library.register_fake(_BACKWARD)
    def _backward_fake(grad_output, grad_h_n, input, reset, h0, weight_ih, weight_hh, bias_ih,
                       bias_hh, output, workspace, variant, need_grad_input=True, need_grad_h0=True):
        T, B, H = _check_forward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant)
        if workspace.dtype != workspace_dtype(weight_hh.dtype):
            raise TypeError(f"session_gru: workspace has dtype {workspace.dtype} but must be "
                            f"{workspace_dtype(weight_hh.dtype)} (the forward's workspace for "
                            f"weight_hh of dtype {weight_hh.dtype})")
        empty = weight_hh.new_empty((0,))
        grad_input = empty if input.dtype == torch.long or not need_grad_input else torch.empty_like(input)
        grad_h0 = torch.empty_like(h0) if need_grad_h0 else weight_hh.new_empty((0,))
        # id input: grad_weight_ih is row-sparse [T*B, 3H] (row t*B+b for column input[t, b])
        grad_w_ih = weight_hh.new_empty((T * B, 3 * H)) if input.dtype == torch.long else torch.empty_like(weight_ih)
        return (grad_input, grad_h0, grad_w_ih,
                torch.empty_like(weight_hh),
                torch.empty_like(bias_ih) if bias_ih is not None else weight_hh.new_empty((0,)),
                torch.empty_like(bias_hh) if bias_hh is not None else weight_hh.new_empty((0,)))

    @torch.library.register_fake(_DIFFERENTIABLE)
    def _session_gru_fake(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant):
        T, B, H = _check_forward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant)
        return weight_hh.new_empty((T, B, H)), weight_hh.new_empty((B, H))

    # Autograd of session_gru_forward for its direct callers (session_gru above has its own, in C++).
    def _setup_context(ctx, inputs, output):
        input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant = inputs
        out, _, workspace = output
        ctx.save_for_backward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, out,
                              workspace)
        ctx.variant = variant
        ctx.mark_non_differentiable(workspace)

    def _backward(ctx, grad_output, grad_h_n, _grad_workspace):
        input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, out, workspace = ctx.saved_tensors
        if grad_output is None:
            grad_output = torch.zeros_like(out)
        if grad_h_n is None:
            grad_h_n = torch.zeros_like(h0)
        need_in, need_h0 = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[2])
        g_in, g_h0, g_wih, g_whh, g_bih, g_bhh = torch.ops.gru4rec.session_gru_backward.default(
            grad_output, grad_h_n, input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, out,
            workspace, ctx.variant, need_in, need_h0)
        if input.dtype == torch.long:  # row-sparse [T*B, 3H] -> dense [3H, N]: rows summed into their columns
            g_wih = g_wih.new_zeros(weight_ih.shape).index_add_(1, input.reshape(-1), g_wih.t())
        return (g_in if input.dtype != torch.long and need_in else None, None,
                g_h0 if need_h0 else None, g_wih, g_whh,
                g_bih if bias_ih is not None else None, g_bhh if bias_hh is not None else None,
                None)

    torch.library.register_autograd(_FORWARD, _backward, setup_context=_setup_context)


if _extension.available():
    _register()
