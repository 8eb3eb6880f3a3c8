// Shared declarations of gru4rec::dropout_apply_ (the training step's dropout in one pass).
#pragma once
#include <ATen/ATen.h>

namespace gru4rec {

// Throws (TORCH_CHECK) naming the bad argument; see csrc/dropout.cpp.
void check_dropout_apply_args(const at::Tensor& mask, const at::Tensor& x, double p);

}  // namespace gru4rec
