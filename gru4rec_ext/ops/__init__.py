"""The differentiable gru4rec ops: compiled kernels with autograd and fake-tensor registrations."""
