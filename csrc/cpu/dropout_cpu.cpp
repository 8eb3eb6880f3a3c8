// CPU kernel of gru4rec::dropout_apply_ (csrc/dropout.cpp): one pass over the elements, split over
// the package's worker threads (csrc/cpu/thread_pool.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cpu/thread_pool.h"
#include "dropout.h"

namespace gru4rec {
namespace {

// mask [n] uniform draws -> (u >= p) * scale in place; returns x [n] * mask (x's shape).
at::Tensor dropout_apply_cpu(at::Tensor& mask, const at::Tensor& x, double p) {
  check_dropout_apply_args(mask, x, p);
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dropout_apply_cpu", [&] {
    const DropoutConsts<scalar_t> c(p);
    scalar_t* m = mask.data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    cpu::parallel_for(n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) yp[i] = dropout_element(m[i], xp[i], c.threshold, c.kept);
    });
  });
  return y;
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("dropout_apply_", &gru4rec::dropout_apply_cpu); }
