// CUDA kernel of gru4rec::sparse_adagrad_ and its launch: indices are sorted on the device (no
// host sync), then the first block of each run of equal indices sums the run's rows and updates
// that row once (negative indices, sorted first, are skipped). Argument rules:
// csrc/sparse_adagrad.cpp. Compiled by nvcc (csrc/cuda/sparse_adagrad_cuda.cu) and, under the host
// emulation, by g++ (csrc/emu/sparse_adagrad_emu.cpp).
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <cmath>

#include "cuda/kernels/launch.cuh"
#include "sparse_adagrad.h"

namespace gru4rec {
namespace {

// param [N, D] (scalar_t) and acc/mom [N, D] (acc_t: float for Half/BFloat16), all with element
// strides (s0, s1); sorted [M] indices ascending (negative: skipped), perm [M] their positions in
// rows [M, D] (contiguous). One block per sorted position; only the first position of each run of
// equal indices works; sums and the update are in acc_t.
template <typename scalar_t, typename acc_t>
__global__ void sparse_adagrad_kernel(scalar_t* __restrict__ param, acc_t* __restrict__ acc,
                                      acc_t* __restrict__ mom, const int64_t* __restrict__ sorted,
                                      const int64_t* __restrict__ perm, const scalar_t* __restrict__ rows,
                                      int64_t N, int64_t M, int64_t D, int64_t s0, int64_t s1, acc_t lr,
                                      acc_t momentum, acc_t eps) {
  const int64_t i = blockIdx.x;
  const int64_t row = sorted[i];
  if (row < 0 || (i > 0 && sorted[i - 1] == row)) return;
  CUDA_KERNEL_ASSERT(row < N);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    acc_t g = 0;
    for (int64_t j = i; j < M && sorted[j] == row; ++j) g += static_cast<acc_t>(rows[perm[j] * D + d]);
    const int64_t at = row * s0 + d * s1;
    const acc_t a = acc[at] + g * g;
    acc[at] = a;
    const acc_t step = g / sqrt(a + eps);
    if (momentum > 0) {
      const acc_t v = momentum * mom[at] - lr * step;
      mom[at] = v;
      param[at] = static_cast<scalar_t>(static_cast<acc_t>(param[at]) + v);
    } else {
      param[at] = static_cast<scalar_t>(static_cast<acc_t>(param[at]) - lr * step);
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_adagrad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_kernel(&sparse_adagrad_kernel<scalar_t, acc_t>, static_cast<unsigned int>(M), threads,
        param.data_ptr<scalar_t>(), acc.data_ptr<acc_t>(), momentum > 0 ? mom.data_ptr<acc_t>() : nullptr,
        sorted.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), rows.data_ptr<scalar_t>(), param.size(0), M, D,
        param.stride(0), param.stride(1), static_cast<acc_t>(lr), static_cast<acc_t>(momentum),
        static_cast<acc_t>(eps));
  });
}

}  // namespace
}  // namespace gru4rec
