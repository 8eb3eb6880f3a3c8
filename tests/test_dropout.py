"""`gru4rec::dropout_apply_` (the training step's dropout in one pass after torch's uniform draw)
against the ATen sequence it replaces, `u.ge_(p).mul_(1 / (1 - p))` then `x * mask`: bit for bit,
on the CPU kernel and on the CUDA kernel under the host emulation (tests/test_cuda_emulation.py
says what that covers)."""
import pytest
import torch

import gru4rec_ext._extension as ext

pytestmark = pytest.mark.skipif(not ext.has_kernel("dropout_apply_", "CPU"), reason="dropout_apply_ not built")
try:
    from gru4rec_ext import _cuda_emu
except ImportError:
    _cuda_emu = None
KERNELS = ["cpu"] + (["emu"] if _cuda_emu is not None else [])


def _ops(kernel):
    return torch.ops.gru4rec if kernel == "cpu" else torch.ops.gru4rec_emu


def _aten(u, x, p):
    mask = u.clone().ge_(p).mul_(1.0 / (1.0 - p))
    return mask, x * mask


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.4, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(32, 100), (3, 7), (0, 5)])
def test_dropout_apply_equals_the_aten_sequence_bitwise(kernel, dtype, p, shape):
    g = torch.Generator().manual_seed(11)
    u = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    if u.numel():
        u.view(-1)[0] = p  # the threshold itself is kept (u >= p)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    mask = u.clone()
    y = _ops(kernel).dropout_apply_(mask, x, p)
    mask_ref, y_ref = _aten(u, x, p)
    assert torch.equal(mask, mask_ref) and torch.equal(y, y_ref)
    assert y.dtype == dtype and y.shape == x.shape


@pytest.mark.skipif(_cuda_emu is None, reason="the emulation module is not built")
def test_emulated_dropout_grid_stride_rounds():
    """More elements than the grid covers: every element is visited once (grid-stride loop)."""
    old = _cuda_emu.set_max_grid_blocks(2)
    try:
        u, x = torch.rand(5, 300), torch.randn(5, 300)
        mask = u.clone()
        y = torch.ops.gru4rec_emu.dropout_apply_(mask, x, 0.3)
    finally:
        _cuda_emu.set_max_grid_blocks(old)
    mask_ref, y_ref = _aten(u, x, 0.3)
    assert torch.equal(mask, mask_ref) and torch.equal(y, y_ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_dropout_apply_argument_errors(kernel):
    ops = _ops(kernel)
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="mask must match x"):
        ops.dropout_apply_(torch.rand(4, 2), x, 0.5)
    with pytest.raises(RuntimeError, match="mask must match x"):
        ops.dropout_apply_(torch.rand(4, 3, dtype=torch.float64), x, 0.5)
    with pytest.raises(RuntimeError, match="p must be in"):
        ops.dropout_apply_(torch.rand(4, 3), x, 1.0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        ops.dropout_apply_(torch.rand(3, 4).t(), x, 0.5)
    with pytest.raises(RuntimeError, match="x must be float32, float64 or bfloat16"):
        ops.dropout_apply_(torch.rand(4, 3).half(), x.half(), 0.5)


def test_dropout_apply_opcheck_and_fake():
    x = torch.randn(6, 5)
    torch.library.opcheck(torch.ops.gru4rec.dropout_apply_.default, (torch.rand(6, 5), x, 0.3))
    y = torch.ops.gru4rec.dropout_apply_(torch.empty(6, 5, device="meta"), x.to("meta"), 0.3)
    assert y.shape == (6, 5) and y.device.type == "meta"
