"""Differentiable gru4rec_ext operators backed by the compiled kernels (`torch.ops.gru4rec.*`),
with autograd and fake-tensor registrations, each falling back to its pure-PyTorch reference where
no kernel exists for the device."""
