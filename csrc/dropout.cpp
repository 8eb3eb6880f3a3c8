// gru4rec::dropout_apply_: GRU4Rec's dropout of the training step in one pass over the elements
// (SPEC section 4): mask holds uniform draws u in [0, 1) (torch.rand_like(x), so that the masks
// are torch's generator's, graph-safe on CUDA) and becomes (u >= p) / (1 - p) in place; returns
// x * mask. The same float operations as rand_like(x).ge_(p).mul_(1 / (1 - p)) then x * mask, so
// the same results bit for bit, in one kernel instead of three. Schema and checks; the kernels
// are csrc/cpu/dropout_cpu.cpp and csrc/cuda/kernels/dropout_kernels.cuh.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dropout.h"

namespace gru4rec {

void check_dropout_apply_args(const at::Tensor& mask, const at::Tensor& x, double p) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
              "dropout_apply_: x must be float32, float64 or bfloat16, got ", dt);
  TORCH_CHECK(mask.sizes() == x.sizes() && mask.scalar_type() == dt && mask.device() == x.device(),
              "dropout_apply_: mask must match x (", x.sizes(), ", ", dt, ", ", x.device(), "), got ", mask.sizes(),
              ", ", mask.scalar_type(), ", ", mask.device());
  TORCH_CHECK(mask.is_contiguous() && x.is_contiguous(), "dropout_apply_: mask and x must be contiguous");
  TORCH_CHECK(p >= 0 && p < 1, "dropout_apply_: p must be in [0, 1), got ", p);
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // mask (in place): uniform draws -> (u >= p) / (1 - p); returns x * mask. See the top of this file.
  m.def("dropout_apply_(Tensor(a!) mask, Tensor x, float p) -> Tensor");
}
