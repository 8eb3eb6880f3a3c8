// The CUDA kernel of gru4rec::dropout_apply_ (csrc/dropout.cpp) and its launch. Compiled by nvcc
// (csrc/cuda/dropout_cuda.cu) and, under the host emulation, by g++ (csrc/emu/dropout_emu.cpp).
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, ... for the host compiler
#endif

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "cuda/kernels/launch.cuh"
#include "dropout.h"

namespace gru4rec {
namespace {

constexpr int kDropoutThreads = 256;

// mask [n] uniform draws -> (u >= threshold) ? kept : 0 in place; y [n] = x * mask (opmath_t).
// Grid-stride over the n elements.
template <typename scalar_t>
__global__ void dropout_apply_kernel(scalar_t* __restrict__ mask, const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ y, scalar_t threshold, scalar_t kept, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    y[i] = dropout_element(mask[i], x[i], threshold, kept);
  }
}

at::Tensor dropout_apply_cuda(at::Tensor& mask, const at::Tensor& x, double p) {
  check_dropout_apply_args(mask, x, p);
  const DeviceGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const int64_t blocks = std::min<int64_t>((n + kDropoutThreads - 1) / kDropoutThreads, max_grid_blocks());
  GRU4REC_CUDA_DISPATCH(x.scalar_type(), "dropout_apply_cuda", [&] {
    const DropoutConsts<scalar_t> c(p);
    launch_kernel(&dropout_apply_kernel<scalar_t>, static_cast<unsigned int>(blocks), kDropoutThreads,
                  mask.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), c.threshold,
                  c.kept, n);
  });
  return y;
}

}  // namespace
}  // namespace gru4rec
