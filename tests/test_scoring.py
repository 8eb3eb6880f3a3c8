"""Scoring against all items in chunks: ranks for the three tie modes and top-k, vs brute force."""
import pytest
import torch

from gru4rec_ext.scoring import auto_chunk_size, score_items, target_ranks, top_k


def brute_ranks(scores, targets):
    """Ranks from the full [B, N] score matrix, the target's score read from the same matrix."""
    t = scores[torch.arange(len(targets)), targets][:, None]
    gt = (scores > t).sum(1).double()
    eq = (scores == t).sum(1).double()
    return {"standard": 1 + gt, "conservative": gt + eq, "median": 1 + gt + (eq - 1) / 2}


def integer_case(B=13, N=97, H=5, device="cpu", seed=0):
    """Small integer values: every score is exact in float32 whatever the summation order, and
    many scores tie exactly."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-2, 3, (B, H), generator=g).float()
    weight = torch.randint(-1, 2, (N, H), generator=g).float()
    bias = torch.randint(-1, 2, (N,), generator=g).float()
    weight[5] = weight[3]  # constructed ties: identical items
    bias[5] = bias[3]
    targets = torch.randint(0, N, (B,), generator=g)
    targets[:3] = torch.tensor([3, 5, N - 1])
    return [t.to(device) for t in (hidden, weight, bias, targets)]


@pytest.mark.parametrize("activation", ["linear", "tanh", "elu"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 32, 96, 97, 1000])
def test_ranks_equal_brute_force_with_ties(device, activation, chunk_size):
    hidden, weight, bias, targets = integer_case(device=device)
    scores = score_items(hidden, weight, bias, activation=activation, elu_alpha=0.5)
    want = brute_ranks(scores, targets)
    got = target_ranks(hidden, weight, bias, targets, activation=activation, elu_alpha=0.5,
                       chunk_size=chunk_size)
    assert (want["conservative"] > want["standard"]).any(), "the case should contain ties"
    for mode in ("standard", "conservative", "median"):
        assert got[mode].dtype == torch.float64 and got[mode].shape == targets.shape
        assert torch.equal(got[mode], want[mode]), mode


def test_ranks_all_tied():
    B, N, H = 4, 50, 3
    hidden, weight, bias = torch.randn(B, H), torch.zeros(N, H), torch.zeros(N)
    targets = torch.tensor([0, 7, 49, 20])
    got = target_ranks(hidden, weight, bias, targets, chunk_size=9)
    assert got["standard"].tolist() == [1.0] * B
    assert got["conservative"].tolist() == [50.0] * B
    assert got["median"].tolist() == [25.5] * B


def test_ranks_random_float_case(device):
    B, N, H = 16, 3000, 24
    hidden, weight, bias = torch.randn(B, H), torch.randn(N, H), torch.randn(N)
    targets = torch.randint(0, N, (B,))
    hidden, weight, bias, targets = (t.to(device) for t in (hidden, weight, bias, targets))
    want = brute_ranks(score_items(hidden.double(), weight.double(), bias.double()), targets)
    got = target_ranks(hidden, weight, bias, targets, chunk_size=256)
    assert torch.equal(got["standard"], want["standard"])
    assert torch.equal(got["standard"], got["conservative"])  # no ties among random floats


def test_score_items_matches_formula():
    hidden, weight, bias = torch.randn(3, 4), torch.randn(6, 4), torch.randn(6)
    lin = hidden @ weight.t() + bias
    torch.testing.assert_close(score_items(hidden, weight, bias), lin)
    torch.testing.assert_close(score_items(hidden, weight, bias, "tanh"), torch.tanh(lin))
    torch.testing.assert_close(score_items(hidden, weight, bias, "elu", 0.3),
                               torch.nn.functional.elu(lin, 0.3))


@pytest.mark.parametrize("k,chunk_size", [(1, 10), (10, 7), (20, 64), (50, None), (300, 33)])
def test_top_k_equals_torch_topk(device, k, chunk_size):
    B, N, H = 9, 300, 16
    # small scores: tanh does not saturate, so there are no ties and the order is unique
    hidden, weight, bias = (t.to(device) for t in (0.1 * torch.randn(B, H), torch.randn(N, H), torch.randn(N)))
    want_s, want_i = score_items(hidden, weight, bias, "tanh").topk(k, dim=1)
    got_s, got_i = top_k(hidden, weight, bias, k, activation="tanh", chunk_size=chunk_size)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_s, want_s)


def test_top_k_exclude():
    B, N, H = 3, 40, 8
    hidden, weight, bias = torch.randn(B, H), torch.randn(N, H), torch.randn(N)
    scores = score_items(hidden, weight, bias)
    best = scores.argmax(1)
    exclude = torch.stack([best, torch.full((B,), -1)], dim=1)  # per row, -1 is padding
    s, i = top_k(hidden, weight, bias, 5, exclude=exclude, chunk_size=6)
    masked = scores.clone()
    masked[torch.arange(B), best] = float("-inf")
    want_s, want_i = masked.topk(5, dim=1)
    assert torch.equal(i, want_i)
    assert not (i == best[:, None]).any()
    # the same items for every row
    s2, i2 = top_k(hidden, weight, bias, 5, exclude=torch.tensor([0, 1, 2]), chunk_size=6)
    assert not (i2 < 3).any()


def test_bad_arguments():
    hidden, weight, bias = torch.randn(3, 4), torch.randn(6, 4), torch.randn(6)
    with pytest.raises(ValueError, match="activation"):
        score_items(hidden, weight, bias, activation="relu")
    with pytest.raises(ValueError, match="weight"):
        score_items(hidden, torch.randn(6, 5), bias)
    with pytest.raises(ValueError, match="bias"):
        score_items(hidden, weight, torch.randn(5))
    with pytest.raises(ValueError, match="targets"):
        target_ranks(hidden, weight, bias, torch.tensor([0, 1, 6]))
    with pytest.raises(TypeError, match="targets"):
        target_ranks(hidden, weight, bias, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="chunk_size"):
        target_ranks(hidden, weight, bias, torch.tensor([0, 1, 2]), chunk_size=0)
    with pytest.raises(ValueError, match="k"):
        top_k(hidden, weight, bias, 7)


def test_auto_chunk_size_bounded_memory():
    assert auto_chunk_size(512, 100) == 100
    c = auto_chunk_size(512, 10_000_000, memory_budget=64 * 2 ** 20)
    assert 1 <= c < 10_000_000 and 512 * c * 4 <= 64 * 2 ** 20
