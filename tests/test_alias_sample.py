"""`gru4rec::alias_sample_` (the sampler's block draw on the CPU, csrc/cpu/alias_sample_cpu.cpp)
against the tensor-op sequence it replaces: the same samples bit for bit and the generator left
in the same state, for any block size and table; the op contract (opcheck) and clear errors."""
import pytest
import torch

import gru4rec_ext._extension as ext
from gru4rec_ext.ops.alias_sample import alias_sample_
from gru4rec_ext.sampling import PopularitySampler, alias_table

pytestmark = pytest.mark.skipif(not ext.has_kernel("alias_sample_", "CPU"), reason="alias_sample_ not built")


def _table(N, seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 50, (N,), generator=g).double()
    counts[0] = 1.0  # at least one item with a count
    prob, alias = alias_table((counts / counts.sum()).numpy())
    return torch.from_numpy(prob).float(), torch.from_numpy(alias)


def _sequence(S, prob, alias, g):
    i = torch.randint(0, prob.numel(), (S,), generator=g)
    u = torch.rand(S, generator=g)
    return torch.where(u < prob[i], i, alias[i])


@pytest.mark.parametrize("N", [1, 7, 1000, 43097])
@pytest.mark.parametrize("S", [0, 1, 623, 625, 2048, 100_003])
def test_alias_sample_equals_the_tensor_op_sequence(N, S):
    prob, alias = _table(N, seed=N + S)
    ours, theirs = torch.Generator().manual_seed(S), torch.Generator().manual_seed(S)
    torch.rand(N % 700, generator=ours), torch.rand(N % 700, generator=theirs)  # start inside a block
    out = torch.empty(S, dtype=torch.int64)
    torch.ops.gru4rec.alias_sample_(out, prob, alias, ours)
    assert torch.equal(out, _sequence(S, prob, alias, theirs))
    assert torch.equal(torch.rand(5, generator=ours), torch.rand(5, generator=theirs))
    assert out.numel() == 0 or (out.min() >= 0 and out.max() < N)


def test_default_generator_and_the_python_wrapper():
    prob, alias = _table(500, seed=1)
    torch.manual_seed(9)
    ours = alias_sample_(torch.empty(3000, dtype=torch.int64), prob, alias)
    torch.manual_seed(9)
    assert torch.equal(ours, _sequence(3000, prob, alias, None))
    strided = torch.empty(3000, 2, dtype=torch.int64)[:, 0]  # not contiguous: the tensor ops
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(alias_sample_(strided, prob, alias, g1), _sequence(3000, prob, alias, g2))


def test_sampler_draws_follow_the_distribution():
    counts = torch.tensor([0.0, 1.0, 3.0, 6.0], dtype=torch.float64)
    s = PopularitySampler(counts, 1.0, "cpu", block_size=1 << 16, seed=3)
    draws = s.draw(1 << 16)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq[0] == 0 and torch.allclose(freq, counts / counts.sum(), atol=0.01)


def test_opcheck_and_errors():
    prob, alias = _table(50, seed=4)
    out = torch.empty(100, dtype=torch.int64)
    torch.library.opcheck(torch.ops.gru4rec.alias_sample_.default, (out, prob, alias, torch.Generator().manual_seed(0)),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match="out must be a contiguous 1-D int64"):
        torch.ops.gru4rec.alias_sample_(torch.empty(4), prob, alias)
    with pytest.raises(RuntimeError, match="prob must be a non-empty 1-D float32"):
        torch.ops.gru4rec.alias_sample_(out, prob.double(), alias)
    with pytest.raises(RuntimeError, match=r"alias must be an int64 \[N=50\]"):
        torch.ops.gru4rec.alias_sample_(out, prob, alias[:10])
