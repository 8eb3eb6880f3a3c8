"""The package's block draws from torch's CPU generator (csrc/cpu/uniform_cpu.cpp, which the
training step's dropout masks use) against torch's own uniform_: the same numbers bit for bit and
the generator left in the same state, for every dtype, at any position in the twister's 624-word
blocks, across many blocks, and from a state restored with torch.set_rng_state."""
import pytest
import torch

import gru4rec_ext._extension as ext

pytestmark = pytest.mark.skipif(not ext.available(), reason="extension not built")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _fill(shape, dtype, simd=True):
    out = torch.empty(shape, dtype=dtype)
    ext._C._uniform_fill_(out, simd)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skip", [0, 1, 311, 623, 624, 625, 2000])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (623,), (624,), (625,), (80, 224), (3, 1249)])
def test_block_draws_equal_torch_uniform(dtype, skip, shape):
    torch.manual_seed(skip + 17)
    torch.rand(skip)  # start anywhere inside a block (float: one word per number)
    ours, ours_next = _fill(shape, dtype), torch.rand(5, dtype=torch.float64)
    torch.manual_seed(skip + 17)
    torch.rand(skip)
    theirs, theirs_next = torch.rand(shape, dtype=dtype), torch.rand(5, dtype=torch.float64)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours_next, theirs_next)  # the generator moved on by the same words


@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "scalar"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_and_a_restored_state(dtype, simd):
    torch.manual_seed(3)
    torch.rand(1000)
    state = torch.get_rng_state()
    ours = _fill((100_003,), dtype, simd)
    torch.set_rng_state(state)
    theirs = torch.rand(100_003, dtype=dtype)
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < 1


def test_fresh_seed_and_the_first_block():
    torch.manual_seed(0)  # a fresh state has no block yet (the first draw makes it)
    ours = _fill((10,), torch.float32)
    torch.manual_seed(0)
    assert torch.equal(ours, torch.rand(10))


def test_strided_output_goes_to_torch_and_bad_dtypes_raise():
    torch.manual_seed(5)
    ours = torch.empty(6, 4).t()
    ext._C._uniform_fill_(ours)
    torch.manual_seed(5)
    theirs = torch.empty(6, 4).t().uniform_(0, 1)
    assert torch.equal(ours, theirs)
    with pytest.raises(RuntimeError):
        ext._C._uniform_fill_(torch.empty(4, dtype=torch.int64))
