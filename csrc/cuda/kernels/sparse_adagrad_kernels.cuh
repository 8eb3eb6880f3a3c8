// CUDA kernel of gru4rec::sparse_adagrad_ and its launch: indices are sorted on the device (no
// host sync), then the first block of each run of equal indices sums the run's rows and updates
// that row once. Compiled by nvcc (csrc/cuda/sparse_adagrad_cuda.cu) and, under the host
// emulation, by g++ (csrc/emu/sparse_adagrad_emu.cpp).
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <ATen/ATen.h>

#include <cmath>

#include "cuda/kernels/launch.cuh"
#include "sparse_adagrad.h"

namespace gru4rec {
namespace {

// param/acc/mom [N, D]; sorted [M] indices ascending, perm [M] their positions in rows [M, D].
// One block per sorted position; only the first position of each run of equal indices works.
template <typename scalar_t>
__global__ void sparse_adagrad_kernel(scalar_t* __restrict__ param, scalar_t* __restrict__ acc,
                                      scalar_t* __restrict__ mom, const int64_t* __restrict__ sorted,
                                      const int64_t* __restrict__ perm, const scalar_t* __restrict__ rows,
                                      int64_t N, int64_t M, int64_t D, scalar_t lr, scalar_t momentum,
                                      scalar_t eps) {
  const int64_t i = blockIdx.x;
  const int64_t row = sorted[i];
  if (i > 0 && sorted[i - 1] == row) return;
  CUDA_KERNEL_ASSERT(row >= 0 && row < N);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    scalar_t g = 0;
    for (int64_t j = i; j < M && sorted[j] == row; ++j) g += rows[perm[j] * D + d];
    const int64_t at = row * D + d;
    const scalar_t a = acc[at] + g * g;
    acc[at] = a;
    const scalar_t step = g / sqrt(a + eps);
    if (momentum > 0) {
      const scalar_t v = momentum * mom[at] - lr * step;
      mom[at] = v;
      param[at] += v;
    } else {
      param[at] -= lr * step;
    }
  }
}

void sparse_adagrad_cuda(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, const at::Tensor& indices,
                         const at::Tensor& rows, double lr, double momentum, double eps) {
  check_sparse_adagrad_args(param, acc, mom, indices, rows, lr, momentum, eps);
  const int64_t M = indices.size(0), D = param.size(1);
  if (M == 0 || D == 0) return;
  const DeviceGuard guard(param.device());
  auto [sorted, perm] = at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  sorted = sorted.contiguous();
  perm = perm.contiguous();
  const int threads = D >= 256 ? 256 : static_cast<int>(((D + 31) / 32) * 32);
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sparse_adagrad_cuda", [&] {
    launch_kernel(&sparse_adagrad_kernel<scalar_t>, static_cast<unsigned int>(M), threads,
        param.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>(),
        momentum > 0 ? mom.data_ptr<scalar_t>() : nullptr, sorted.data_ptr<int64_t>(),
        perm.data_ptr<int64_t>(), rows.data_ptr<scalar_t>(), param.size(0), M, D,
        static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum), static_cast<scalar_t>(eps));
  });
}

}  // namespace
}  // namespace gru4rec
