// gru4rec::sparse_adagrad_: the row-sparse Adagrad-with-momentum update of an item table
// (SPEC section 5), and gru4rec::dense_adagrad_. This file holds the schemas and the argument
// checks shared by the CPU and CUDA kernels (csrc/cpu/sparse_adagrad_cpu.cpp,
// csrc/cuda/sparse_adagrad_cuda.cu).
//
// sparse_adagrad_'s arguments: param [N, D] float32/float64/bfloat16/float16, dense or a permuted
// view of a dense tensor (weight.t() updates weight's columns); acc and mom (mom only when
// momentum > 0) with param's sizes AND strides, in the state dtype (float32 for bfloat16/float16
// params, else param's dtype); indices int64 [M] contiguous, negative entries skipped (their rows
// ignored), others in [0, N); rows [M, D] contiguous in param's dtype. Duplicates are summed.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <utility>
#include <vector>

#include "sparse_adagrad.h"

namespace gru4rec {

namespace {

bool is_param_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_sparse_adagrad_args(const at::Tensor& param, const at::Tensor& acc, const at::Tensor& mom,
                               const at::Tensor& indices, const at::Tensor& rows, double lr,
                               double momentum, double eps) {
  TORCH_CHECK(param.dim() == 2, "sparse_adagrad_: param must be [N, D], got ", param.dim(), " dims");
  TORCH_CHECK(is_param_dtype(param.scalar_type()),
              "sparse_adagrad_: param must be float32, float64, bfloat16 or float16, got ", param.scalar_type());
  TORCH_CHECK(param.is_non_overlapping_and_dense(),
              "sparse_adagrad_: param must be a dense tensor or a permuted view of one (such as weight.t()), got "
              "strides ",
              param.strides());
  const at::ScalarType state = adagrad_state_dtype(param.scalar_type());
  std::vector<std::pair<const char*, const at::Tensor*>> state_tensors = {{"acc", &acc}};
  if (momentum > 0) state_tensors.push_back({"mom", &mom});
  for (const auto& [name, t] : state_tensors) {
    TORCH_CHECK(t->sizes() == param.sizes() && t->strides() == param.strides(), "sparse_adagrad_: ", name,
                " must have param's sizes ", param.sizes(), " and strides ", param.strides(), ", got ", t->sizes(),
                " and ", t->strides(), momentum > 0 ? "" : " (mom is ignored when momentum == 0)");
    TORCH_CHECK(t->scalar_type() == state, "sparse_adagrad_: ", name, " must be ", state, " for a ",
                param.scalar_type(), " param (float32 state for bfloat16/float16 params), got ", t->scalar_type());
  }
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
              "sparse_adagrad_: indices must be a 1-D int64 tensor, got ", indices.scalar_type(), " with ",
              indices.dim(), " dims");
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == indices.size(0) && rows.size(1) == param.size(1),
              "sparse_adagrad_: rows must be [M=", indices.size(0), ", D=", param.size(1), "], got ",
              rows.sizes());
  TORCH_CHECK(rows.scalar_type() == param.scalar_type(), "sparse_adagrad_: rows must have param's dtype ",
              param.scalar_type(), ", got ", rows.scalar_type());
  TORCH_CHECK(rows.is_contiguous() && indices.is_contiguous(), "sparse_adagrad_: rows and indices must be contiguous");
  for (const auto* t : {&acc, &rows, &indices}) {
    TORCH_CHECK(t->device() == param.device(), "sparse_adagrad_: every tensor must be on ", param.device(),
                ", one is on ", t->device());
  }
  if (momentum > 0) {
    TORCH_CHECK(mom.device() == param.device(), "sparse_adagrad_: mom must be on ", param.device(), ", got ",
                mom.device());
  }
  TORCH_CHECK(lr > 0, "sparse_adagrad_: lr must be > 0, got ", lr);
  TORCH_CHECK(momentum >= 0 && momentum < 1, "sparse_adagrad_: momentum must be in [0, 1), got ", momentum);
  TORCH_CHECK(eps > 0, "sparse_adagrad_: eps must be > 0, got ", eps);
}

void check_dense_adagrad_args(const at::TensorList params, const at::TensorList accs, const at::TensorList moms,
                              const at::TensorList grads, double lr, double momentum, double eps) {
  const size_t n = params.size();
  TORCH_CHECK(accs.size() == n && grads.size() == n && (momentum <= 0 || moms.size() == n),
              "dense_adagrad_: params, accs, grads (and moms when momentum > 0) must be lists of the same length, "
              "got ", n, ", ", accs.size(), ", ", grads.size(), ", ", moms.size());
  for (size_t i = 0; i < n; ++i) {
    const auto& p = params[i];
    TORCH_CHECK(is_param_dtype(p.scalar_type()), "dense_adagrad_: params[", i,
                "] must be float32, float64, bfloat16 or float16, got ", p.scalar_type());
    const at::ScalarType state = adagrad_state_dtype(p.scalar_type());
    std::vector<std::pair<const at::Tensor*, at::ScalarType>> others = {{&accs[i], state}, {&grads[i], p.scalar_type()}};
    if (momentum > 0) others.push_back({&moms[i], state});
    for (const auto& [t, dtype] : others) {
      TORCH_CHECK(t->sizes() == p.sizes() && t->scalar_type() == dtype && t->device() == p.device(),
                  "dense_adagrad_: grads[", i, "] must match params[", i, "] (", p.sizes(), ", ", p.scalar_type(),
                  ", ", p.device(), "), accs/moms[", i, "] too in the state dtype ", state, "; got ", t->sizes(),
                  ", ", t->scalar_type(), ", ", t->device());
    }
    TORCH_CHECK(p.is_contiguous() && accs[i].is_contiguous() && grads[i].is_contiguous() &&
                    (momentum <= 0 || moms[i].is_contiguous()),
                "dense_adagrad_: tensors [", i, "] must be contiguous");
  }
  TORCH_CHECK(lr > 0, "dense_adagrad_: lr must be > 0, got ", lr);
  TORCH_CHECK(momentum >= 0 && momentum < 1, "dense_adagrad_: momentum must be in [0, 1), got ", momentum);
  TORCH_CHECK(eps > 0, "dense_adagrad_: eps must be > 0, got ", eps);
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // In place on param, acc and mom (mom is ignored, and may be empty, when momentum == 0);
  // argument rules at the top of this file.
  m.def("sparse_adagrad_(Tensor(a!) param, Tensor(b!) acc, Tensor(c!) mom, Tensor indices, Tensor rows, "
        "float lr, float momentum, float eps) -> ()");
  // The dense update of a list of parameters in one call (moms ignored, may be [], when momentum == 0).
  m.def("dense_adagrad_(Tensor(a!)[] params, Tensor(b!)[] accs, Tensor(c!)[] moms, Tensor[] grads, "
        "float lr, float momentum, float eps) -> ()");
}
