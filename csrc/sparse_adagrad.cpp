// gru4rec::sparse_adagrad_: the row-sparse Adagrad-with-momentum update of an item table
// (SPEC section 5). This file holds the schema and the argument checks shared by the CPU and CUDA
// kernels (csrc/cpu/sparse_adagrad_cpu.cpp, csrc/cuda/sparse_adagrad_cuda.cu).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "sparse_adagrad.h"

namespace gru4rec {

void check_sparse_adagrad_args(const at::Tensor& param, const at::Tensor& acc, const at::Tensor& mom,
                               const at::Tensor& indices, const at::Tensor& rows, double lr,
                               double momentum, double eps) {
  TORCH_CHECK(param.dim() == 2, "sparse_adagrad_: param must be [N, D], got ", param.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(param.scalar_type()), "sparse_adagrad_: param must be floating, got ",
              param.scalar_type());
  TORCH_CHECK(acc.sizes() == param.sizes(), "sparse_adagrad_: acc must be shaped like param ",
              param.sizes(), ", got ", acc.sizes());
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
              "sparse_adagrad_: indices must be a 1-D int64 tensor, got ", indices.scalar_type(), " with ",
              indices.dim(), " dims");
  TORCH_CHECK(rows.dim() == 2 && rows.size(0) == indices.size(0) && rows.size(1) == param.size(1),
              "sparse_adagrad_: rows must be [M=", indices.size(0), ", D=", param.size(1), "], got ",
              rows.sizes());
  if (momentum > 0) {
    TORCH_CHECK(mom.sizes() == param.sizes(), "sparse_adagrad_: mom must be shaped like param ",
                param.sizes(), " when momentum > 0, got ", mom.sizes());
    TORCH_CHECK(mom.scalar_type() == param.scalar_type() && mom.is_contiguous() &&
                    mom.device() == param.device(),
                "sparse_adagrad_: mom must be a contiguous ", param.scalar_type(), " tensor on ",
                param.device());
  }
  for (const auto* t : {&acc, &rows}) {
    TORCH_CHECK(t->scalar_type() == param.scalar_type(), "sparse_adagrad_: acc and rows must have param's dtype ",
                param.scalar_type(), ", got ", t->scalar_type());
  }
  for (const auto* t : {&param, &acc, &rows, &indices}) {
    TORCH_CHECK(t->is_contiguous(), "sparse_adagrad_: param, acc, rows and indices must be contiguous");
    TORCH_CHECK(t->device() == param.device(), "sparse_adagrad_: every tensor must be on ", param.device(),
                ", one is on ", t->device());
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
    TORCH_CHECK(at::isFloatingType(p.scalar_type()), "dense_adagrad_: params[", i, "] must be floating");
    std::vector<const at::Tensor*> others = {&accs[i], &grads[i]};
    if (momentum > 0) others.push_back(&moms[i]);
    for (const auto* t : others) {
      TORCH_CHECK(t->sizes() == p.sizes() && t->scalar_type() == p.scalar_type() && t->device() == p.device(),
                  "dense_adagrad_: accs/moms/grads[", i, "] must match params[", i, "] (", p.sizes(), ", ",
                  p.scalar_type(), ", ", p.device(), ")");
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
  // In place on param, acc and mom (mom is ignored, and may be empty, when momentum == 0).
  m.def("sparse_adagrad_(Tensor(a!) param, Tensor(b!) acc, Tensor(c!) mom, Tensor indices, Tensor rows, "
        "float lr, float momentum, float eps) -> ()");
  // The dense update of a list of parameters in one call (moms ignored, may be [], when momentum == 0).
  m.def("dense_adagrad_(Tensor(a!)[] params, Tensor(b!)[] accs, Tensor(c!)[] moms, Tensor[] grads, "
        "float lr, float momentum, float eps) -> ()");
}
