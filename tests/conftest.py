import os

import pytest
import torch

import gru4rec_ext._extension as ext

CUDA = torch.cuda.is_available()

# Devices every kernel test runs on: the CPU always, CUDA when a GPU is present (skipped otherwise).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def needs_extension():
    return pytest.mark.skipif(not ext.available() and not os.environ.get("GRU4REC_EXPECT_BUILD"),
                              reason="extension not built")


def rel_err(a, b):
    """||a - b|| / max(||b||, tiny): the error measure of the kernel tests."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
