"""Differentiable gru4rec_ext operators backed by the compiled kernels (`torch.ops.gru4rec.*`),
with autograd and fake-tensor registrations, each falling back to its pure-PyTorch reference where
no kernel exists for the device."""
from .sampled_loss import sampled_loss_backward, sampled_loss_forward, sampled_ranking_loss
from .session_gru import session_gru

__all__ = ["session_gru", "sampled_ranking_loss", "sampled_loss_forward", "sampled_loss_backward"]
