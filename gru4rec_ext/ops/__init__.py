"""Differentiable gru4rec_ext operators backed by the compiled kernels (`torch.ops.gru4rec.*`),
with autograd and fake-tensor registrations, each falling back to its pure-PyTorch reference where
no kernel exists for the device. The functions live in their modules (`ops.session_gru`,
`ops.sampled_loss`) and are exported from `gru4rec_ext` itself; they are not re-exported here, so
that the module `gru4rec_ext.ops.session_gru` is not shadowed by the function of the same name."""
