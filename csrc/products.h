// The matrix products of the ops' host code (csrc/session_gru.h, csrc/sampled_loss.cpp): on the
// CPU split over the package's worker threads (csrc/cpu/thread_pool.h), each piece one
// single-threaded BLAS call; on other devices ATen's own (cuBLAS on CUDA). The host emulation of
// the CUDA build (GRU4REC_CUDA_EMU, csrc/emu) runs them through ATen, as that build does.
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
#ifndef GRU4REC_CUDA_EMU
  if (out.is_cpu()) return cpu::mm_out(out, a, b, false);
#endif
  at::mm_out(out, a, b);
}

// out += a @ b.
inline void addmm_(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#ifndef GRU4REC_CUDA_EMU
  if (out.is_cpu()) return cpu::mm_out(out, a, b, true);
#endif
  out.addmm_(a, b);
}

// out = bias [N] + a @ b (bias added to every row).
inline void addmm_out(at::Tensor& out, const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
#ifndef GRU4REC_CUDA_EMU
  if (out.is_cpu()) return cpu::mm_out(out, a, b, false, bias);
#endif
  at::addmm_out(out, bias, a, b);
}

// a @ b into a new tensor.
inline at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gru4rec::mm_out(out, a, b);
  return out;
}

}  // namespace gru4rec
