// Shared declarations of the gru4rec::sparse_adagrad_ op (row-sparse Adagrad with momentum).
#pragma once
#include <ATen/ATen.h>

namespace gru4rec {

// The dtype of the Adagrad state (acc, mom) of a param dtype: float32 for bfloat16 and float16.
inline at::ScalarType adagrad_state_dtype(at::ScalarType param) {
  return param == at::kHalf || param == at::kBFloat16 ? at::kFloat : param;
}

// Throws (TORCH_CHECK) naming the bad argument; see csrc/sparse_adagrad.cpp.
void check_sparse_adagrad_args(const at::Tensor& param, const at::Tensor& acc, const at::Tensor& mom,
                               const at::Tensor& indices, const at::Tensor& rows, double lr,
                               double momentum, double eps);

void check_dense_adagrad_args(const at::TensorList params, const at::TensorList accs, const at::TensorList moms,
                              const at::TensorList grads, double lr, double momentum, double eps);

}  // namespace gru4rec
