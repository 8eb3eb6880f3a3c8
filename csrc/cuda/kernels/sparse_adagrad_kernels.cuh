// CUDA kernels of the Adagrad updates and their launch code:
//   - gru4rec::sparse_adagrad_: one block per index; the block of the first position of each run
//     of equal indices sums the run's rows (in the order of their positions) and updates that row
//     once; negative indices are skipped. The runs are found without a sort (each block scans the
//     indices) up to 8192 indices, after one stable sort on the device above that (no host sync
//     either way);
//   - gru4rec::sparse_adagrad_pair_: the same for two tables that share the indices (the output
//     layer's Wy and By); the second table's rows belong to the first M2 indices only;
//   - gru4rec::dense_adagrad_: every tensor of the list in one launch (a multi-tensor kernel).
// Argument rules: csrc/sparse_adagrad.cpp. Compiled by nvcc (csrc/cuda/sparse_adagrad_cuda.cu) and, under the host
// emulation, by g++ (csrc/emu/sparse_adagrad_emu.cpp).
#pragma once

#ifdef GRU4REC_CUDA_EMU
#include "emu/cuda_emu.h"  // __global__, threadIdx, __syncthreads, ... for the host compiler
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>

#include "cuda/kernels/launch.cuh"
#include "sparse_adagrad.h"

namespace gru4rec {
namespace {

// The Adagrad-momentum update of one element (the CPU kernels' formula, in acc_t): acc += g^2;
// v = mu v - lr g / sqrt(acc + eps); p += v (momentum 0: p -= lr g / sqrt(acc + eps)).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void adagrad_element(scalar_t& p, acc_t& a, acc_t* v, acc_t g, acc_t lr, acc_t momentum,
                                                acc_t eps) {
  const acc_t an = a + g * g;
  a = an;
  const acc_t step = lr * (g / sqrt(an + eps));
  if (momentum > 0) {
    const acc_t vn = momentum * *v - step;
    *v = vn;
    p = static_cast<scalar_t>(static_cast<acc_t>(p) + vn);
  } else {
    p = static_cast<scalar_t>(static_cast<acc_t>(p) - step);
  }
}

// Up to this many indices, each block finds its run of equal indices by scanning all of them (no
// sort: M^2 / blockDim reads in all, a few microseconds at M = 2B+K of a training step); above it,
// the launcher sorts once (at::sort, a few launches and ~30 us on an H200 even for 2k indices).
// The emulation's tests lower it (set_scan_max_indices) to run the sorted path on small cases.
#ifdef GRU4REC_CUDA_EMU
inline int64_t scan_max_indices() { return gru4rec_emu::scan_index_limit(); }
#else
constexpr int64_t scan_max_indices() { return 8192; }
#endif

// The most positions of one run that a block keeps in shared memory (a longer run, an item drawn
// hundreds of times in one step, is summed by a second scan of the indices instead).
constexpr int kRunCap = 128;

// The run of block i: the positions j of the indices [M] with keys[j] == row, in increasing order
// of j (the order a stable sort keeps, so that the sums are the same either way). Two sources:
//   - sorted: keys = the indices sorted stably, perm [M] their positions; block i leads when
//     i == 0 or keys[i-1] != row, and its run is perm[i], perm[i+1], ... while keys[j] == row;
//   - scanned (perm == nullptr): keys = the indices as given; the block reads all M of them, leads
//     when no earlier position holds row, and keeps the run's positions in shared memory (sorted by
//     a rank count), or, past kRunCap of them, scans again at each use.
// Every thread of the block constructs it (it holds barriers) and then calls for_each the same way.
struct Run {
  const int64_t* keys;
  const int64_t* perm;
  int64_t M, i, row;
  int n;       // scanned: the run's length (> kRunCap: not kept)
  int* pos;    // scanned: its positions, increasing
  bool lead;

  __device__ Run(const int64_t* keys_, const int64_t* perm_, int64_t M_, int64_t i_, int64_t row_)
      : keys(keys_), perm(perm_), M(M_), i(i_), row(row_), n(0), pos(nullptr), lead(false) {
    if (perm != nullptr) {
      lead = i == 0 || keys[i - 1] != row;
      return;
    }
    __shared__ int s_count, s_earlier;
    __shared__ int s_found[kRunCap], s_pos[kRunCap];
    if (threadIdx.x == 0) {
      s_count = 0;
      s_earlier = 0;
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      if (keys[j] != row) continue;
      if (j < i) {
        atomicExch(&s_earlier, 1);
      } else {
        const int at = atomicAdd(&s_count, 1);
        if (at < kRunCap) s_found[at] = static_cast<int>(j);
      }
    }
    __syncthreads();
    lead = s_earlier == 0;
    n = s_count;
    if (!lead || n > kRunCap) return;  // the same for every thread of the block
    for (int e = threadIdx.x; e < n; e += blockDim.x) {  // the positions are distinct: rank = place
      const int p = s_found[e];
      int rank = 0;
      for (int x = 0; x < n; ++x) rank += s_found[x] < p;
      s_pos[rank] = p;
    }
    __syncthreads();
    pos = s_pos;
  }

  // f(j) for each position j of the run, in increasing order of j.
  template <typename F>
  __device__ void for_each(F&& f) const {
    if (perm != nullptr) {
      for (int64_t j = i; j < M && keys[j] == row; ++j) f(perm[j]);
    } else if (n <= kRunCap) {
      for (int x = 0; x < n; ++x) f(static_cast<int64_t>(pos[x]));
    } else {
      for (int64_t j = i; j < M; ++j) {
        if (keys[j] == row) f(j);
      }
    }
  }
};

// Row-sparse Adagrad of one table, or of two at the same indices: keys [M] the indices (or their
// stable sort, with perm [M] their positions; see Run), negative ones skipped; param [N, D] with
// rows [M, D] (every index), param2 [N, D2] with rows2 [M2, D2] (indices 0..M2-1 only: a row that
// only later indices touch keeps param2's row, acc2 and mom2 as they are; D2 = 0: one table).
// acc/mom in acc_t (float for Half/BFloat16); element strides (s0, s1) of param/acc/mom, (t0, t1)
// of param2/acc2/mom2. One block per position; the block that leads a run of equal indices sums
// the run's rows (in acc_t) and updates the row once; threads over D + D2.
template <typename scalar_t, typename acc_t>
__global__ void sparse_adagrad_pair_kernel(scalar_t* __restrict__ param, acc_t* __restrict__ acc,
                                           acc_t* __restrict__ mom, scalar_t* __restrict__ param2,
                                           acc_t* __restrict__ acc2, acc_t* __restrict__ mom2,
                                           const int64_t* __restrict__ keys, const int64_t* __restrict__ perm,
                                           const scalar_t* __restrict__ rows, const scalar_t* __restrict__ rows2,
                                           int64_t N, int64_t M, int64_t M2, int64_t D, int64_t D2, int64_t s0,
                                           int64_t s1, int64_t t0, int64_t t1, acc_t lr, acc_t momentum, acc_t eps) {
  const int64_t i = blockIdx.x;
  const int64_t row = keys[i];
  if (row < 0) return;
  CUDA_KERNEL_ASSERT(row < N);
  const Run run(keys, perm, M, i, row);
  if (!run.lead) return;
  for (int64_t e = threadIdx.x; e < D + D2; e += blockDim.x) {
    if (e < D) {
      acc_t g = 0;
      run.for_each([&](int64_t j) { g += static_cast<acc_t>(rows[j * D + e]); });
      const int64_t at = row * s0 + e * s1;
      adagrad_element<scalar_t, acc_t>(param[at], acc[at], momentum > 0 ? mom + at : nullptr, g, lr, momentum, eps);
    } else {
      const int64_t d = e - D;
      acc_t g = 0;
      bool touched = false;
      run.for_each([&](int64_t j) {
        if (j < M2) {
          touched = true;
          g += static_cast<acc_t>(rows2[j * D2 + d]);
        }
      });
      if (!touched) continue;  // not a no-op with momentum: an untouched row keeps its state
      const int64_t at = row * t0 + d * t1;
      adagrad_element<scalar_t, acc_t>(param2[at], acc2[at], momentum > 0 ? mom2 + at : nullptr, g, lr, momentum,
                                       eps);
    }
  }
}

// The most tensors one dense_adagrad_ launch takes (the launcher splits longer lists).
constexpr int kDenseAdagradMax = 24;

// The tensors of one dense_adagrad_ launch, passed by value as the kernel's argument: tensor t has
// n[t] contiguous elements at p[t], g[t] (scalar_t) and a[t], v[t] (acc_t; v null when momentum 0).
template <typename scalar_t, typename acc_t>
struct DenseAdagradList {
  scalar_t* p[kDenseAdagradMax];
  acc_t* a[kDenseAdagradMax];
  acc_t* v[kDenseAdagradMax];
  const scalar_t* g[kDenseAdagradMax];
  int64_t n[kDenseAdagradMax];
};

// Dense Adagrad of a list of tensors, grid (x blocks, tensors): block row blockIdx.y updates
// tensor blockIdx.y of `list` (n[t] elements), grid-stride over its elements.
template <typename scalar_t, typename acc_t>
__global__ void dense_adagrad_kernel(DenseAdagradList<scalar_t, acc_t> list, acc_t lr, acc_t momentum, acc_t eps) {
  const int t = blockIdx.y;
  const int64_t n = list.n[t];
  scalar_t* p = list.p[t];
  acc_t* a = list.a[t];
  acc_t* v = list.v[t];
  const scalar_t* g = list.g[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    adagrad_element<scalar_t, acc_t>(p[i], a[i], momentum > 0 ? v + i : nullptr, static_cast<acc_t>(g[i]), lr,
                                     momentum, eps);
  }
}

constexpr int kAdagradThreads = 256;

// Threads of a block that loops over D elements of a row: D rounded up to a warp, at most 256.
int row_threads(int64_t D) {
  return D >= kAdagradThreads ? kAdagradThreads : static_cast<int>(((D + 31) / 32) * 32);
}

// The keys and perm of the update kernels' Run: the indices as they are (perm undefined) up to
// scan_max_indices() of them, else their stable sort and its permutation.
std::pair<at::Tensor, at::Tensor> run_keys(const at::Tensor& indices) {
  if (indices.size(0) <= scan_max_indices()) return {indices.contiguous(), at::Tensor()};
  auto [sorted, perm] = at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  return {sorted.contiguous(), perm.contiguous()};
}

// The launch of both ops: one table (param2 undefined, rows2 ignored) or two.
void launch_sparse_adagrad(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, at::Tensor& param2, at::Tensor& acc2,
                           at::Tensor& mom2, const at::Tensor& indices, const at::Tensor& rows,
                           const at::Tensor& rows2, double lr, double momentum, double eps) {
  const bool two = param2.defined();
  const int64_t M = indices.size(0), M2 = two ? rows2.size(0) : 0, D = param.size(1), D2 = two ? param2.size(1) : 0;
  if (M == 0 || D + D2 == 0) return;
  const DeviceGuard guard(param.device());
  const auto [keys, perm] = run_keys(indices);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_adagrad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool mu = momentum > 0;
    launch_kernel(&sparse_adagrad_pair_kernel<scalar_t, acc_t>, static_cast<unsigned int>(M), row_threads(D + D2),
                  param.data_ptr<scalar_t>(), acc.data_ptr<acc_t>(), mu ? mom.data_ptr<acc_t>() : nullptr,
                  two ? param2.data_ptr<scalar_t>() : nullptr, two ? acc2.data_ptr<acc_t>() : nullptr,
                  two && mu ? mom2.data_ptr<acc_t>() : nullptr, keys.data_ptr<int64_t>(),
                  perm.defined() ? perm.data_ptr<int64_t>() : nullptr, rows.data_ptr<scalar_t>(),
                  two ? rows2.data_ptr<scalar_t>() : nullptr, param.size(0), M, M2, D, D2, param.stride(0),
                  param.stride(1), two ? param2.stride(0) : 0, two ? param2.stride(1) : 0, static_cast<acc_t>(lr),
                  static_cast<acc_t>(momentum), static_cast<acc_t>(eps));
  });
}

void sparse_adagrad_cuda(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, const at::Tensor& indices,
                         const at::Tensor& rows, double lr, double momentum, double eps) {
  check_sparse_adagrad_args(param, acc, mom, indices, rows, lr, momentum, eps);
  at::Tensor none;
  launch_sparse_adagrad(param, acc, mom, none, none, none, indices, rows, none, lr, momentum, eps);
}

// Wy [N, D] and By [N, D2] (the bias as [N, 1]) at the same indices, whose runs are found once;
// see sparse_adagrad_pair_kernel and csrc/sparse_adagrad.cpp.
void sparse_adagrad_pair_cuda(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, at::Tensor& param2,
                              at::Tensor& acc2, at::Tensor& mom2, const at::Tensor& indices, const at::Tensor& rows,
                              const at::Tensor& rows2, double lr, double momentum, double eps) {
  check_sparse_adagrad_pair_args(param, acc, mom, param2, acc2, mom2, indices, rows, rows2, lr, momentum, eps);
  launch_sparse_adagrad(param, acc, mom, param2, acc2, mom2, indices, rows, rows2, lr, momentum, eps);
}

// One launch per run of up to kDenseAdagradMax consecutive tensors of one dtype (the GRU weights
// of a model: one launch for up to 6 layers).
void dense_adagrad_cuda(at::TensorList params, at::TensorList accs, at::TensorList moms, at::TensorList grads,
                        double lr, double momentum, double eps) {
  check_dense_adagrad_args(params, accs, moms, grads, lr, momentum, eps);
  const int64_t n = static_cast<int64_t>(params.size());
  if (n == 0) return;
  const DeviceGuard guard(params[0].device());
  for (int64_t first = 0; first < n;) {
    const at::ScalarType dtype = params[first].scalar_type();
    int64_t last = first;
    while (last < n && last - first < kDenseAdagradMax && params[last].scalar_type() == dtype) ++last;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dense_adagrad_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      DenseAdagradList<scalar_t, acc_t> list{};
      int64_t most = 0;
      for (int64_t i = first; i < last; ++i) {
        const int64_t k = i - first;
        list.p[k] = params[i].data_ptr<scalar_t>();
        list.a[k] = accs[i].data_ptr<acc_t>();
        list.v[k] = momentum > 0 ? moms[i].data_ptr<acc_t>() : nullptr;
        list.g[k] = grads[i].data_ptr<scalar_t>();
        list.n[k] = params[i].numel();
        most = std::max(most, list.n[k]);
      }
      if (most > 0) {
        const int64_t blocks = std::min<int64_t>((most + kAdagradThreads - 1) / kAdagradThreads, max_grid_blocks());
        launch_kernel(&dense_adagrad_kernel<scalar_t, acc_t>,
                      dim3(static_cast<unsigned int>(blocks), static_cast<unsigned int>(last - first)),
                      kAdagradThreads, list, static_cast<acc_t>(lr), static_cast<acc_t>(momentum),
                      static_cast<acc_t>(eps));
      }
    });
    first = last;
  }
}

}  // namespace
}  // namespace gru4rec
