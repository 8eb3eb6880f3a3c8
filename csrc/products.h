// The matrix products of the ops' host code (csrc/session_gru.h, csrc/sampled_loss.cpp): on the
// CPU split over the package's worker threads (csrc/cpu/thread_pool.h), each piece one
// single-threaded BLAS call; on other devices ATen's own (cuBLAS on CUDA).
#pragma once

#include <ATen/ATen.h>

namespace gru4rec {

namespace cpu {
// out [M,N] = a [M,K] @ b [K,N] (+ out when `accumulate`; + bias [N] on every row when defined),
// split over the larger of M and N.
void mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
            const at::Tensor& bias = at::Tensor());
}  // namespace cpu

// out = a @ b (out preallocated [M,N], any strides BLAS takes).
inline void mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.is_cpu()) {
    cpu::mm_out(out, a, b, false);
  } else {
    at::mm_out(out, a, b);
  }
}

// out += a @ b.
inline void addmm_(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.is_cpu()) {
    cpu::mm_out(out, a, b, true);
  } else {
    out.addmm_(a, b);
  }
}

// out = bias [N] + a @ b (bias added to every row).
inline void addmm_out(at::Tensor& out, const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  if (out.is_cpu()) {
    cpu::mm_out(out, a, b, false, bias);
  } else {
    at::addmm_out(out, bias, a, b);
  }
}

// a @ b into a new tensor.
inline at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gru4rec::mm_out(out, a, b);
  return out;
}

}  // namespace gru4rec
