// CPU kernel of gru4rec::dropout_apply_ (csrc/dropout.cpp): one serial pass (the step's dropout
// covers B*H elements, a few microseconds).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "dropout.h"

namespace gru4rec {
namespace {

// mask [n] uniform draws -> (u >= p) * scale in place; returns x [n] * mask (x's shape).
at::Tensor dropout_apply_cpu(at::Tensor& mask, const at::Tensor& x, double p) {
  check_dropout_apply_args(mask, x, p);
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dropout_apply_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // As ATen: ge_ gives 1 or 0 in scalar_t, mul_ by the double scale computes in opmath_t.
    const scalar_t kept = static_cast<scalar_t>(opmath_t(1) * static_cast<opmath_t>(1.0 / (1.0 - p)));
    const scalar_t threshold = static_cast<scalar_t>(p);
    scalar_t* m = mask.data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t mi = m[i] >= threshold ? kept : scalar_t(0);
      m[i] = mi;
      yp[i] = static_cast<scalar_t>(static_cast<opmath_t>(xp[i]) * static_cast<opmath_t>(mi));
    }
  });
  return y;
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("dropout_apply_", &gru4rec::dropout_apply_cpu); }
