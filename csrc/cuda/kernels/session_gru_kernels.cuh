// CUDA kernels of gru4rec::session_gru_forward/backward: one fused elementwise kernel per step,
// one thread per (row, unit), grid-stride. Arithmetic in at::opmath_type<scalar_t> (float for
// bf16); the workspace [B,4H] per step is in that type too (float32 for a bf16 model), so that
// (1 - z) and (1 - n^2) of saturated gates keep their digits for the backward.
// Compiled by nvcc (csrc/cuda/session_gru_cuda.cu) and, under the host emulation, by g++
// (csrc/emu/session_gru_emu.cpp); the launch code is csrc/cuda/kernels/session_gru_launch.cuh.
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <ATen/OpMathType.h>

#include "gru_math.h"
#include "session_gru.h"

namespace gru4rec {
namespace {

template <typename T>
__device__ __forceinline__ const T* cp(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
__device__ __forceinline__ T* mp(void* p) { return static_cast<T*>(p); }

// Input part of row b: dense rows [B,3H] (stride 1), or column ids[b] of weight_ih [3H,N] (stride N).
template <typename scalar_t, bool kIds>
__device__ __forceinline__ const scalar_t* gi_row(const FwdStep& s, int64_t b, int64_t& stride) {
  if constexpr (kIds) {
    const int64_t id = s.ids[b];
    CUDA_KERNEL_ASSERT(id >= 0 && id < s.n_items && "session_gru: input item id out of range");
    stride = s.n_items;
    return cp<scalar_t>(s.gi) + id;
  } else {
    stride = 1;
    return cp<scalar_t>(s.gi) + b * 3 * s.H;
  }
}

#define GRU4REC_GRID_STRIDE_LOOP(i, n)                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// cudnn forward step: gi [B,3H] or weight_ih [3H,N]+ids [B], gh [B,3H], hprev [B,H] -> out/h_n [B,H], ws [B,4H].
template <typename scalar_t, bool kIds>
__global__ void forward_cudnn_kernel(FwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    int64_t st;
    const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
    const scalar_t* gh = cp<scalar_t>(s.gh) + b * 3 * H;
    const bool keep = !s.reset[b];
    const acc_t hp = keep ? acc_t(cp<scalar_t>(s.hprev)[i]) : acc_t(0);
    const acc_t gr = keep ? acc_t(gh[j]) : acc_t(0);
    const acc_t gz = keep ? acc_t(gh[H + j]) : acc_t(0);
    const acc_t gn = keep ? acc_t(gh[2 * H + j]) : acc_t(0);
    const acc_t a_r = acc_t(gi[j * st]) + acc_t(bi[j]) + gr + acc_t(bh[j]);
    const acc_t a_z = acc_t(gi[(H + j) * st]) + acc_t(bi[H + j]) + gz + acc_t(bh[H + j]);
    const acc_t a_n = acc_t(gi[(2 * H + j) * st]) + acc_t(bi[2 * H + j]);
    const acc_t hn = gn + acc_t(bh[2 * H + j]);
    acc_t r, z, n, h;
    cudnn_forward(a_r, a_z, a_n, hn, hp, r, z, n, h);
    mp<scalar_t>(s.out)[i] = scalar_t(h);
    if (s.h_n != nullptr) mp<scalar_t>(s.h_n)[i] = scalar_t(h);
    acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
    ws[j] = r;
    ws[H + j] = z;
    ws[2 * H + j] = n;
    ws[3 * H + j] = hn;
  }
}

// gru4rec gates step: gi as above, gh [B,2H] = h W_hh[:2H]^T, hprev [B,H] -> ws [B,4H] r, z and r*h.
template <typename scalar_t, bool kIds>
__global__ void forward_gru4rec_gates_kernel(FwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    int64_t st;
    const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
    const scalar_t* gh = cp<scalar_t>(s.gh) + b * 2 * H;
    const bool keep = !s.reset[b];
    const acc_t hp = keep ? acc_t(cp<scalar_t>(s.hprev)[i]) : acc_t(0);
    const acc_t gr = keep ? acc_t(gh[j]) : acc_t(0);
    const acc_t gz = keep ? acc_t(gh[H + j]) : acc_t(0);
    const acc_t a_r = acc_t(gi[j * st]) + acc_t(bi[j]) + gr + acc_t(bh[j]);
    const acc_t a_z = acc_t(gi[(H + j) * st]) + acc_t(bi[H + j]) + gz + acc_t(bh[H + j]);
    acc_t r, z, rh;
    gru4rec_gates(a_r, a_z, hp, r, z, rh);
    acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
    ws[j] = r;
    ws[H + j] = z;
    ws[3 * H + j] = rh;
  }
}

// gru4rec candidate step: gi as above, gh [B,H] = (r*h) W_hh[2H:]^T, ws z -> out/h_n [B,H], ws c.
template <typename scalar_t, bool kIds>
__global__ void forward_gru4rec_cand_kernel(FwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    int64_t st;
    const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
    const bool keep = !s.reset[b];
    const acc_t hp = keep ? acc_t(cp<scalar_t>(s.hprev)[i]) : acc_t(0);
    const acc_t a_c = acc_t(gi[(2 * H + j) * st]) + acc_t(bi[2 * H + j]) +
                      acc_t(cp<scalar_t>(s.gh)[i]) + acc_t(bh[2 * H + j]);
    acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
    acc_t c, h;
    gru4rec_candidate(a_c, ws[H + j], hp, c, h);
    mp<scalar_t>(s.out)[i] = scalar_t(h);
    if (s.h_n != nullptr) mp<scalar_t>(s.h_n)[i] = scalar_t(h);
    ws[2 * H + j] = c;
  }
}

// dL/dh' of element i = (b, j): grad_out + (grad_h_n at the last step | carry unless step t+1 reset b).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t grad_in(const BwdStep& s, int64_t i, int64_t b) {
  acc_t dh = acc_t(cp<scalar_t>(s.grad_out)[i]);
  if (s.reset_next == nullptr) {
    if (s.grad_h_n != nullptr) dh += acc_t(cp<scalar_t>(s.grad_h_n)[i]);
  } else if (!s.reset_next[b]) {
    dh += acc_t(cp<scalar_t>(s.carry)[i]);
  }
  return dh;
}

// cudnn backward step: grad_out/carry [B,H], ws [B,4H], hprev [B,H] -> dgi, dgh [B,3H], hp, carry [B,H].
template <typename scalar_t>
__global__ void backward_cudnn_kernel(BwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    const acc_t dh = grad_in<scalar_t, acc_t>(s, i, b);
    const acc_t hp = !s.reset[b] ? acc_t(cp<scalar_t>(s.hprev)[i]) : acc_t(0);
    const acc_t* ws = cp<acc_t>(s.ws) + b * 4 * H;
    acc_t da_r, da_z, da_n, dhn, dh_direct;
    cudnn_backward(dh, ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j], hp, da_r, da_z, da_n, dhn,
                   dh_direct);
    scalar_t* dgi = mp<scalar_t>(s.dgi) + b * 3 * H;
    scalar_t* dgh = mp<scalar_t>(s.dgh) + b * 3 * H;
    dgi[j] = scalar_t(da_r);
    dgi[H + j] = scalar_t(da_z);
    dgi[2 * H + j] = scalar_t(da_n);
    dgh[j] = scalar_t(da_r);
    dgh[H + j] = scalar_t(da_z);
    dgh[2 * H + j] = scalar_t(dhn);
    mp<scalar_t>(s.hp)[i] = scalar_t(hp);
    mp<scalar_t>(s.carry)[i] = scalar_t(dh_direct);
  }
}

// gru4rec backward, part 1: grad_out/carry, ws z, c, hprev -> dgi [B,3H] z and c blocks, hp, carry.
template <typename scalar_t>
__global__ void backward_gru4rec_cand_kernel(BwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    const acc_t dh = grad_in<scalar_t, acc_t>(s, i, b);
    const acc_t hp = !s.reset[b] ? acc_t(cp<scalar_t>(s.hprev)[i]) : acc_t(0);
    const acc_t* ws = cp<acc_t>(s.ws) + b * 4 * H;
    acc_t da_z, da_c, dh_direct;
    gru4rec_backward_cand(dh, ws[H + j], ws[2 * H + j], hp, da_z, da_c, dh_direct);
    scalar_t* dg = mp<scalar_t>(s.dgi) + b * 3 * H;
    dg[H + j] = scalar_t(da_z);
    dg[2 * H + j] = scalar_t(da_c);
    mp<scalar_t>(s.hp)[i] = scalar_t(hp);
    mp<scalar_t>(s.carry)[i] = scalar_t(dh_direct);
  }
}

// gru4rec backward, part 2: drh [B,H] = da_c U_c, ws r, hp [B,H] -> dgi [B,3H] r block, carry += drh * r.
template <typename scalar_t>
__global__ void backward_gru4rec_gates_kernel(BwdStep s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  GRU4REC_GRID_STRIDE_LOOP(i, s.B * H) {
    const int64_t b = i / H, j = i - b * H;
    acc_t da_r, dh_rh;
    gru4rec_backward_gates(acc_t(cp<scalar_t>(s.drh)[i]), cp<acc_t>(s.ws)[b * 4 * H + j],
                           acc_t(cp<scalar_t>(s.hp)[i]), da_r, dh_rh);
    mp<scalar_t>(s.dgi)[b * 3 * H + j] = scalar_t(da_r);
    scalar_t* carry = mp<scalar_t>(s.carry);
    carry[i] = scalar_t(acc_t(carry[i]) + dh_rh);
  }
}

// The bias gradients, column sums of the gate gradients, in one launch for both biases: job y
// (blockIdx.y) sums the R rows of src[y] [R, W] (contiguous) into dst[y] [W] and, when not null,
// dst2[y] [W] (the gru4rec cell's two biases get the same sums). Blocks of kBiasCols columns x
// kBiasSlices row slices; slice k sums rows k, k + kBiasSlices, ... and the slices are then added in
// order: the same bits on every run.
constexpr int kBiasCols = 32, kBiasSlices = 8;
template <typename scalar_t>
struct BiasSumJobs {
  const scalar_t* src[2];
  scalar_t* dst[2];
  scalar_t* dst2[2];
};
template <typename scalar_t>
__global__ void bias_grads_kernel(BiasSumJobs<scalar_t> jobs, int64_t R, int64_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t part[kBiasSlices][kBiasCols];
  const int y = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kBiasCols + threadIdx.x;
  acc_t sum = 0;
  if (c < W) {
    for (int64_t r = threadIdx.y; r < R; r += kBiasSlices) sum += acc_t(jobs.src[y][r * W + c]);
  }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < W) {
    acc_t total = part[0][threadIdx.x];
    for (int k = 1; k < kBiasSlices; ++k) total += part[k][threadIdx.x];
    jobs.dst[y][c] = scalar_t(total);
    if (jobs.dst2[y] != nullptr) jobs.dst2[y][c] = scalar_t(total);
  }
}

// Zeroes the rows of x [B,H] (contiguous) where reset [B] is true.
template <typename scalar_t>
__global__ void zero_reset_rows_kernel(scalar_t* x, const bool* reset, int64_t B, int64_t H) {
  GRU4REC_GRID_STRIDE_LOOP(i, B * H) {
    if (reset[i / H]) x[i] = scalar_t(0);
  }
}

}  // namespace
}  // namespace gru4rec
