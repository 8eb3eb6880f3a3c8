// The CUDA kernel of gru4rec::step_inputs_ (csrc/step_inputs.cpp) and its launch: one block copies
// schedule row `step`, the K samples at `offset` and the candidates' log q into the static
// buffers, then one thread advances both counters. Compiled by nvcc
// (csrc/cuda/step_inputs_cuda.cu) and, under the host emulation, by g++ (csrc/emu/step_inputs_emu.cpp).
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "cuda/kernels/launch.cuh"
#include "step_inputs.h"

namespace gru4rec {
namespace {

// One block of 1024 threads: the B+K ~ 2k entries in 2-3 rounds of dependent loads (a sample id,
// then its log q) instead of 9 (5.6 us of a 183 us step at 256 threads on an H200).
constexpr int kStepInputThreads = 1024;

// step, offset int64 [1]; inputs_all, targets_all int64 [S,B], reset_all, valid_all bool [S,B];
// cache int64 [Nc]; log_count, log_weight [N] or null; out: inputs [B], candidates [B+K], reset,
// valid [B], log_q [B+K] (null without log tables), update_ids [2B+K] (null when not wanted: the
// targets and inputs with -1 for rows not valid, the samples between). One block: every thread
// reads the counters before thread 0 advances them (after the barrier).
template <typename log_t>
__global__ void step_inputs_kernel(int64_t* __restrict__ step, int64_t* __restrict__ offset,
                                   const int64_t* __restrict__ inputs_all, const int64_t* __restrict__ targets_all,
                                   const bool* __restrict__ reset_all, const bool* __restrict__ valid_all,
                                   const int64_t* __restrict__ cache, const log_t* __restrict__ log_count,
                                   const log_t* __restrict__ log_weight, int64_t* __restrict__ inputs,
                                   int64_t* __restrict__ candidates, bool* __restrict__ reset,
                                   bool* __restrict__ valid, log_t* __restrict__ log_q,
                                   int64_t* __restrict__ update_ids, int64_t S, int64_t B,
                                   int64_t K, int64_t Nc, int64_t N) {
  const int64_t s = *step, o = *offset;
  CUDA_KERNEL_ASSERT(s >= 0 && s < S);
  CUDA_KERNEL_ASSERT(o >= 0 && o + K <= Nc);
  for (int64_t j = threadIdx.x; j < B + K; j += blockDim.x) {
    int64_t item;
    bool keep = true;  // a sample, or the target of a valid row
    if (j < B) {
      const int64_t input = inputs_all[s * B + j];
      keep = valid_all[s * B + j];
      inputs[j] = input;
      item = targets_all[s * B + j];
      reset[j] = reset_all[s * B + j];
      valid[j] = keep;
      if (update_ids != nullptr) update_ids[B + K + j] = keep ? input : -1;
    } else {
      item = cache[o + j - B];
    }
    candidates[j] = item;
    if (update_ids != nullptr) update_ids[j] = keep ? item : -1;
    if (log_q != nullptr) {
      CUDA_KERNEL_ASSERT(item >= 0 && item < N);
      log_q[j] = j < B ? log_count[item] : log_weight[item];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    *step = s + 1;
    *offset = o + K;
  }
}

void step_inputs_cuda(at::Tensor& step, at::Tensor& offset, const at::Tensor& inputs_all,
                      const at::Tensor& targets_all, const at::Tensor& reset_all, const at::Tensor& valid_all,
                      const at::Tensor& cache, const std::optional<at::Tensor>& log_count,
                      const std::optional<at::Tensor>& log_weight, at::Tensor& inputs, at::Tensor& candidates,
                      at::Tensor& reset, at::Tensor& valid, at::Tensor& log_q,
                      const std::optional<at::Tensor>& update_ids) {
  const StepInputDims d = check_step_inputs_args(step, offset, inputs_all, targets_all, reset_all, valid_all, cache,
                                                 log_count, log_weight, inputs, candidates, reset, valid, log_q,
                                                 update_ids);
  const DeviceGuard guard(inputs_all.device());
  const auto dtype = d.log_q ? log_q.scalar_type() : at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "step_inputs_cuda", [&] {
    launch_kernel(&step_inputs_kernel<scalar_t>, 1, kStepInputThreads, step.data_ptr<int64_t>(),
                  offset.data_ptr<int64_t>(), inputs_all.data_ptr<int64_t>(), targets_all.data_ptr<int64_t>(),
                  reset_all.data_ptr<bool>(), valid_all.data_ptr<bool>(), cache.data_ptr<int64_t>(),
                  d.log_q ? log_count->data_ptr<scalar_t>() : nullptr,
                  d.log_q ? log_weight->data_ptr<scalar_t>() : nullptr, inputs.data_ptr<int64_t>(),
                  candidates.data_ptr<int64_t>(), reset.data_ptr<bool>(), valid.data_ptr<bool>(),
                  d.log_q ? log_q.data_ptr<scalar_t>() : nullptr,
                  d.update_ids ? update_ids->data_ptr<int64_t>() : nullptr, d.S, d.B, d.K, d.Nc,
                  d.log_q ? log_count->size(0) : int64_t(0));
  });
}

}  // namespace
}  // namespace gru4rec
