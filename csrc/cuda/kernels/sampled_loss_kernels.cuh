// The CUDA kernel of gru4rec::sampled_loss_forward: the fused per-row pass, one block per row
// with block reductions (warp shuffles, then one warp over the warps' partials). Compiled by nvcc
// (csrc/cuda/sampled_loss_cuda.cu) and, under the host emulation, by g++
// (csrc/emu/sampled_loss_emu.cpp); the launch code is csrc/cuda/kernels/sampled_loss_launch.cuh.
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <cmath>
#include <limits>

#include "loss_math.h"

namespace gru4rec {
namespace {

namespace lm = loss_math;

// Threads of the row kernel's block: 512 when the rows are few (a training step's B = 32 or 80
// rows on 132 SMs: one block per row, so each row's passes over its C ~ 2k columns are the step's
// latency, 5 loads per thread each instead of 9), else 256. (1024 spills registers under
// __launch_bounds__; 512 does not, in float and bfloat16.)
constexpr int kLossThreadsFew = 512;
constexpr int kLossThreadsMany = 256;
constexpr int64_t kFewLossRows = 256;
constexpr int kMaxVals = 4;  // most values one block reduction carries

// Block-wide reduction (max when kMax, else sum) of NV values held by every thread of a block of
// kWarps warps; every thread gets the results back in vals. partials: shared
// [kWarps * kMaxVals], results: shared [kMaxVals].
template <bool kMax, int kWarps, int NV, typename acc_t>
__device__ __forceinline__ void block_reduce(acc_t (&vals)[NV], acc_t* partials, acc_t* results) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const acc_t identity = kMax ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    acc_t x = vals[k];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const acc_t y = __shfl_xor_sync(0xffffffffu, x, off);
      x = kMax ? lm::max_of(x, y) : x + y;
    }
    if (lane == 0) partials[warp * kMaxVals + k] = x;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      acc_t x = lane < kWarps ? partials[lane * kMaxVals + k] : identity;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const acc_t y = __shfl_xor_sync(0xffffffffu, x, off);
        x = kMax ? lm::max_of(x, y) : x + y;
      }
      if (lane == 0) results[k] = x;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < NV; ++k) vals[k] = results[k];
}

// The fused row pass, one block of kThreads per row b: S [B,C] scores without the bias in, dL/dS
// (times scale = 1/B) out in place; bias [N] the output bias (added in a first pass: S[b,j] +
// bias[cand[j]], so that no gathered bias row and no bias product is needed); cand [C] int64; log_q [C] or null (cross-entropy with logq > 0 only); valid [B] or
// null (an invalid row has no loss and its column is no negative); row_loss [B] (accumulation type, times scale). Activated scores are recomputed from S in
// every pass (S stays in L1/L2), so no scratch memory is needed.
template <int kThreads, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sampled_loss_row_kernel(scalar_t* __restrict__ S, const scalar_t* __restrict__ bias,
                            const int64_t* __restrict__ cand,
                            const scalar_t* __restrict__ log_q, const bool* __restrict__ valid,
                            acc_t* __restrict__ row_loss, int64_t C, lm::LossParams<acc_t> p) {
  constexpr int kWarps = kThreads / 32;
  __shared__ acc_t partials[kWarps * kMaxVals];
  __shared__ acc_t results[kMaxVals];
  const int64_t b = blockIdx.x;
  scalar_t* row = S + b * C;
  const int tid = threadIdx.x;

  auto zero_row = [&]() {
    for (int64_t j = tid; j < C; j += kThreads) row[j] = scalar_t(0);
    if (tid == 0) row_loss[b] = acc_t(0);
  };
  if (valid != nullptr && !valid[b]) {
    zero_row();
    return;
  }
  for (int64_t j = tid; j < C; j += kThreads) {
    row[j] = static_cast<scalar_t>(static_cast<acc_t>(row[j]) + static_cast<acc_t>(bias[cand[j]]));
  }
  __syncthreads();  // row[b] below, and every pass, reads what other threads added
  const int64_t target = cand[b];
  auto act = [&](acc_t x) { return lm::activate(x, p.activation, p.elu_alpha); };
  // Negatives: every other column, except the target columns of invalid rows (absent at an epoch's
  // tail) and, with mask_hits, the columns holding this row's target item.
  const int64_t B = static_cast<int64_t>(gridDim.x);
  auto is_neg = [&](int64_t j) {
    return j != b && !(valid != nullptr && j < B && !valid[j]) && !(p.mask_hits && cand[j] == target);
  };
  auto write = [&](int64_t j, acc_t x, acc_t r, acc_t g) {
    row[j] = static_cast<scalar_t>(g * lm::activate_grad(x, r, p.activation, p.elu_alpha) * p.scale);
  };
  const acc_t ri = act(static_cast<acc_t>(row[b]));
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();

  if (p.loss == lm::kCrossEntropy) {
    // z_j = r_j - logq log q_j over the positive and the negatives; L = lse(z) - z_i.
    auto shift = [&](int64_t j) { return log_q ? p.logq * static_cast<acc_t>(log_q[j]) : acc_t(0); };
    const acc_t zi = ri - shift(b);
    acc_t mx[1] = {ninf};
    for (int64_t j = tid; j < C; j += kThreads)
      if (j == b || is_neg(j)) mx[0] = lm::max_of(mx[0], act(static_cast<acc_t>(row[j])) - shift(j));
    block_reduce<true, kWarps>(mx, partials, results);
    const acc_t m = mx[0];
    acc_t sum[1] = {acc_t(0)};
    for (int64_t j = tid; j < C; j += kThreads)
      if (j == b || is_neg(j)) sum[0] += std::exp(act(static_cast<acc_t>(row[j])) - shift(j) - m);
    block_reduce<false, kWarps>(sum, partials, results);
    const acc_t invZ = acc_t(1) / sum[0];
    for (int64_t j = tid; j < C; j += kThreads) {
      const acc_t x = static_cast<acc_t>(row[j]), r = act(x);
      acc_t g = (j == b || is_neg(j)) ? std::exp(r - shift(j) - m) * invZ : acc_t(0);
      if (j == b) g -= acc_t(1);
      write(j, x, r, g);
    }
    if (tid == 0) row_loss[b] = (m + std::log(sum[0]) - zi) * p.scale;
    return;
  }

  if (p.loss == lm::kBPR || p.loss == lm::kTop1) {
    // BPR: -(1/N_s) sum_j log sigmoid(r_i - r_j); TOP1: (1/N_s) sum_j sigmoid(r_j - r_i) + sigmoid(r_j^2).
    const bool bpr = p.loss == lm::kBPR;
    acc_t acc[3] = {acc_t(0), acc_t(0), acc_t(0)};  // sum of terms, -dL/dr_i * N_s, N_s
    for (int64_t j = tid; j < C; j += kThreads) {
      if (!is_neg(j)) continue;
      const acc_t r = act(static_cast<acc_t>(row[j])), d = r - ri;
      if (bpr) {
        acc_t sig, sig_neg, log_sig;  // of r_i - r_j
        lm::sigmoid_and_log(-d, sig, sig_neg, log_sig);
        acc[0] -= log_sig;
        acc[1] += sig_neg;
      } else {
        acc_t sd, gd;
        lm::sigmoid_and_grad(d, sd, gd);
        acc[0] += sd + lm::sigmoid(r * r);
        acc[1] += gd;
      }
      acc[2] += acc_t(1);
    }
    block_reduce<false, kWarps>(acc, partials, results);
    if (acc[2] <= acc_t(0)) {
      zero_row();
      return;
    }
    const acc_t inv = acc_t(1) / acc[2];
    for (int64_t j = tid; j < C; j += kThreads) {
      const acc_t x = static_cast<acc_t>(row[j]), r = act(x);
      acc_t g = acc_t(0);
      if (j == b) {
        g = -acc[1] * inv;
      } else if (is_neg(j)) {
        const acc_t d = r - ri;
        g = bpr ? lm::sigmoid(d) : lm::sigmoid_grad(d) + acc_t(2) * r * lm::sigmoid_grad(r * r);
        g *= inv;  // BPR: sigmoid(r_j - r_i) / N_s
      }
      write(j, x, r, g);
    }
    if (tid == 0) row_loss[b] = acc[0] * inv * p.scale;
    return;
  }

  // BPR-max and TOP1-max: softmax over the negatives, s_j = exp(r_j - m) / Z.
  // BPR-max also needs v_j = r_j + log sigmoid(r_i - r_j): log sum_j s_j sigmoid(r_i - r_j)
  // = lse(v) - lse(r) over the negatives (see csrc/cpu/sampled_loss_cpu.cpp for the gradients).
  const bool bprmax = p.loss == lm::kBPRMax;
  acc_t mx[2] = {ninf, ninf};  // max r_j, max v_j over the negatives
  for (int64_t j = tid; j < C; j += kThreads) {
    if (!is_neg(j)) continue;
    const acc_t r = act(static_cast<acc_t>(row[j]));
    mx[0] = lm::max_of(mx[0], r);
    if (bprmax) mx[1] = lm::max_of(mx[1], r + lm::log_sigmoid(ri - r));
  }
  block_reduce<true, kWarps>(mx, partials, results);
  if (mx[0] == ninf) {  // no negatives
    zero_row();
    return;
  }
  const acc_t m = mx[0], mv = mx[1];
  // BPR-max: {Z, sum e_j r_j^2, sum exp(v_j - mv), sum exp(v_j - mv) sigmoid(r_j - r_i)}
  // TOP1-max: {Z, sum e_j g_j, sum e_j sigmoid'(r_j - r_i), unused}
  acc_t acc[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  for (int64_t j = tid; j < C; j += kThreads) {
    if (!is_neg(j)) continue;
    const acc_t r = act(static_cast<acc_t>(row[j]));
    const acc_t e = std::exp(r - m);
    acc[0] += e;
    if (bprmax) {
      acc_t sig, sig_neg, log_sig;  // of r_i - r_j
      lm::sigmoid_and_log(ri - r, sig, sig_neg, log_sig);
      const acc_t w = std::exp(r + log_sig - mv);
      acc[1] += e * r * r;
      acc[2] += w;
      acc[3] += w * sig_neg;
    } else {
      acc_t sd, gd;
      lm::sigmoid_and_grad(r - ri, sd, gd);
      acc[1] += e * (sd + lm::sigmoid(r * r));
      acc[2] += e * gd;
    }
  }
  block_reduce<false, kWarps>(acc, partials, results);
  const acc_t invZ = acc_t(1) / acc[0];
  if (bprmax) {
    const acc_t lse = mv + std::log(acc[2]) - (m + std::log(acc[0]));
    const acc_t leps = lm::log_bprmax_eps<acc_t>();
    const acc_t rho = lm::sigmoid(lse - leps);
    const acc_t R = acc[1] * invZ, inv_sv = acc_t(1) / acc[2];
    for (int64_t j = tid; j < C; j += kThreads) {
      const acc_t x = static_cast<acc_t>(row[j]), r = act(x);
      acc_t g = acc_t(0);
      if (j == b) {
        g = -rho * acc[3] * inv_sv;
      } else if (is_neg(j)) {
        acc_t sig, sig_neg, log_sig;  // of r_i - r_k
        lm::sigmoid_and_log(ri - r, sig, sig_neg, log_sig);
        const acc_t sk = std::exp(r - m) * invZ;
        const acc_t wk = std::exp(r + log_sig - mv) * inv_sv;
        g = -rho * (wk * sig - sk) + p.bpreg * sk * (acc_t(2) * r + r * r - R);
      }
      write(j, x, r, g);
    }
    if (tid == 0) row_loss[b] = (-lm::log_add_exp(lse, leps) + p.bpreg * R) * p.scale;
  } else {
    const acc_t G = acc[1] * invZ;
    for (int64_t j = tid; j < C; j += kThreads) {
      const acc_t x = static_cast<acc_t>(row[j]), r = act(x);
      acc_t g = acc_t(0);
      if (j == b) {
        g = -acc[2] * invZ;
      } else if (is_neg(j)) {
        acc_t sd, gd, ss, gs;
        lm::sigmoid_and_grad(r - ri, sd, gd);
        lm::sigmoid_and_grad(r * r, ss, gs);
        g = std::exp(r - m) * invZ * (sd + ss - G + gd + acc_t(2) * r * gs);
      }
      write(j, x, r, g);
    }
    if (tid == 0) row_loss[b] = G * p.scale;
  }
}

}  // namespace
}  // namespace gru4rec
