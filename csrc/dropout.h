// Shared declarations and element math of gru4rec::dropout_apply_ (the training step's dropout in
// one pass), used by the CPU kernel (csrc/cpu/dropout_cpu.cpp) and the CUDA one
// (csrc/cuda/kernels/dropout_kernels.cuh).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#ifndef GRU4REC_HOST_DEVICE
#ifdef __CUDACC__
#define GRU4REC_HOST_DEVICE __host__ __device__
#else
#define GRU4REC_HOST_DEVICE
#endif
#endif

namespace gru4rec {

// Throws (TORCH_CHECK) naming the bad argument; see csrc/dropout.cpp.
void check_dropout_apply_args(const at::Tensor& mask, const at::Tensor& x, double p);

// The kept mask value and the threshold, rounded as ATen rounds them in
// rand_like(x).ge_(p).mul_(1 / (1 - p)): ge_ compares against p in scalar_t and gives 1 or 0,
// mul_ by the double scale computes in opmath_t.
template <typename scalar_t>
struct DropoutConsts {
  scalar_t threshold, kept;
  explicit DropoutConsts(double p)
      : threshold(static_cast<scalar_t>(p)),
        kept(static_cast<scalar_t>(at::opmath_type<scalar_t>(1) *
                                   static_cast<at::opmath_type<scalar_t>>(1.0 / (1.0 - p)))) {}
};

// One element: the uniform draw u becomes the mask value (in place); returns x * mask (opmath_t).
template <typename scalar_t>
GRU4REC_HOST_DEVICE inline scalar_t dropout_element(scalar_t& u, scalar_t x, scalar_t threshold, scalar_t kept) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t m = u >= threshold ? kept : scalar_t(0);
  u = m;
  return static_cast<scalar_t>(static_cast<opmath_t>(x) * static_cast<opmath_t>(m));
}

}  // namespace gru4rec
