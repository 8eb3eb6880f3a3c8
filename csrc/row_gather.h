// Row gathers of the ops' host code (the loss's candidate rows, the step's input rows): on the CPU
// split over the package's worker threads (csrc/cpu/thread_pool.h), elsewhere ATen's index_select.
#pragma once

#include <ATen/ATen.h>

namespace gru4rec {

namespace cpu {
// out [M, D...] = src [N, D...] rows idx [M] (int64, in [0, N)); src and out contiguous.
void gather_rows(at::Tensor& out, const at::Tensor& src, const at::Tensor& idx);
}  // namespace cpu

// out = src.index_select(0, idx) into a preallocated out.
inline void gather_rows_out(at::Tensor& out, const at::Tensor& src, const at::Tensor& idx) {
#ifndef GRU4REC_CUDA_EMU  // the emulation module has no thread pool
  if (out.is_cpu() && src.is_contiguous() && out.is_contiguous() && idx.is_contiguous()) {
    cpu::gather_rows(out, src, idx);
    return;
  }
#endif
  at::index_select_out(out, src, 0, idx);
}

// src.index_select(0, idx) into a new tensor.
inline at::Tensor gather_rows(const at::Tensor& src, const at::Tensor& idx) {
  std::vector<int64_t> shape(src.sizes().begin(), src.sizes().end());
  shape[0] = idx.size(0);
  at::Tensor out = at::empty(shape, src.options());
  gather_rows_out(out, src, idx);
  return out;
}

}  // namespace gru4rec
