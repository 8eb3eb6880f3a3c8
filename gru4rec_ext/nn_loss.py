"""`SampledRankingLoss`: the sampled ranking loss (SPEC section 4) as an nn.Module."""
from __future__ import annotations

import torch
from torch import nn

from .ops.sampled_loss import sampled_ranking_loss
from .reference_loss import activation_code, loss_code

__all__ = ["SampledRankingLoss"]


class SampledRankingLoss(nn.Module):
    """Sampled ranking loss over the B targets and K shared samples of a mini-batch.

    loss: "bpr", "top1", "bpr-max", "top1-max", "cross-entropy" (or "xe"); activation: the final
    activation of the scores, "linear", "tanh", "elu" or "elu-<alpha>"; bpreg: BPR-max's score
    regularisation; logq > 0: cross-entropy's popularity correction (forward then needs log_q);
    mask_accidental_hits: a sample equal to a row's target is not a negative of that row;
    sparse_grad: the weight and bias gradients are sparse COO tensors of the B+K candidates' rows
    (as nn.Embedding(sparse=True) gives) instead of dense [N,H] and [N] ones, for optimizers that
    take sparse gradients. Names are checked here, so a bad one fails at construction.
    """

    def __init__(self, loss: str = "cross-entropy", activation: str = "linear", bpreg: float = 0.0,
                 logq: float = 0.0, mask_accidental_hits: bool = False, sparse_grad: bool = False):
        super().__init__()
        loss_code(loss)
        activation_code(activation)
        self.loss = loss
        self.activation = activation
        self.bpreg = float(bpreg)
        self.logq = float(logq)
        self.mask_accidental_hits = bool(mask_accidental_hits)
        self.sparse_grad = bool(sparse_grad)

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                targets: torch.Tensor, samples: torch.Tensor, log_q: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B,H], weight [N,H], bias [N], targets [B], samples [K] -> the 0-dim loss."""
        return sampled_ranking_loss(hidden, weight, bias, targets, samples, loss=self.loss,
                                    activation=self.activation, bpreg=self.bpreg, logq=self.logq,
                                    log_q=log_q, valid=valid,
                                    mask_accidental_hits=self.mask_accidental_hits,
                                    sparse_grad=self.sparse_grad)

    def extra_repr(self) -> str:
        return (f"loss={self.loss!r}, activation={self.activation!r}, bpreg={self.bpreg}, "
                f"logq={self.logq}, mask_accidental_hits={self.mask_accidental_hits}"
                + (", sparse_grad=True" if self.sparse_grad else ""))
