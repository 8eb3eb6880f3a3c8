"""The build: the extension imports and registers its kernels for every backend it was built with."""
import os

import pytest
import torch

import gru4rec_ext._extension as ext

OPS = ["session_gru_forward", "session_gru_backward", "sampled_loss_forward", "sampled_loss_backward",
       "sparse_adagrad_", "sparse_adagrad_pair_", "dense_adagrad_", "step_inputs_", "train_step_", "dropout_apply_"]
CPU_OPS = OPS + ["unique_ids"]  # the CPU step's distinct candidates (the CUDA step needs none)


def test_extension_imports():
    assert ext.available(), f"gru4rec_ext._C did not import: {ext._IMPORT_ERROR}"


@pytest.mark.parametrize("op", CPU_OPS)
def test_cpu_kernels_registered(op):
    assert ext.has_kernel(op, "CPU"), f"gru4rec::{op} has no CPU kernel"


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_when_built(op):
    expect = os.environ.get("GRU4REC_EXPECT_CUDA") == "1"
    if expect:
        assert ext.build_info().get("cuda"), "CI asked for the CUDA kernels (FORCE_CUDA=1) but they were not built"
    if not ext.build_info().get("cuda"):
        pytest.skip("built without CUDA")
    assert ext.has_kernel(op, "CUDA"), f"gru4rec::{op} has no CUDA kernel"


def test_build_info_matches_torch():
    info = ext.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]


def test_emulation_module_built():
    """gru4rec_ext._cuda_emu (the CUDA kernels under the host emulation) is built by default."""
    if os.environ.get("GRU4REC_NO_EMU"):
        pytest.skip("GRU4REC_NO_EMU=1: the emulation module is not built")
    from gru4rec_ext import _cuda_emu
    for op in OPS:
        assert op in _cuda_emu.ops
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gru4rec_emu::{op}", "CPU"), op
