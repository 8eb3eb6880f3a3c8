// CPU kernels of gru4rec::sparse_adagrad_ and dense_adagrad_: for the sparse one, duplicates of an
// index are summed (in order of appearance), then each touched row's acc, mom and param are
// updated once (negative indices are skipped); grouping the indices is O(M), not a sort.
// float and double update in their own type; Half and BFloat16 parameters keep acc and mom in
// float and update in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/id_groups.h"
#include "cpu/thread_pool.h"
#include "sparse_adagrad.h"

namespace gru4rec {
namespace {

// p, a, v, g [n]: acc += g^2; v = mu v - lr g / sqrt(acc + eps); p += v (v null: p -= lr g / sqrt(...)).
// Float runs 8 lanes of AVX in the AVX2 build, else 4 of SSE2, with the same operations in the same
// order (no FMA), so both give the scalar tail's results bit for bit (the compiler will not
// vectorise std::sqrt under -fmath-errno).
template <typename scalar_t>
inline void adagrad_span(scalar_t* __restrict__ p, scalar_t* __restrict__ a, scalar_t* __restrict__ v,
                         const scalar_t* __restrict__ g, int64_t n, scalar_t lr, scalar_t mu, scalar_t eps) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m128 vlr = _mm_set1_ps(lr), vmu = _mm_set1_ps(mu), veps = _mm_set1_ps(eps);
    for (; i + 4 <= n; i += 4) {
      const __m128 gg = _mm_loadu_ps(g + i);
      const __m128 aa = _mm_add_ps(_mm_loadu_ps(a + i), _mm_mul_ps(gg, gg));
      _mm_storeu_ps(a + i, aa);
      const __m128 step = _mm_mul_ps(vlr, _mm_div_ps(gg, _mm_sqrt_ps(_mm_add_ps(aa, veps))));
      if (v != nullptr) {
        const __m128 vv = _mm_sub_ps(_mm_mul_ps(vmu, _mm_loadu_ps(v + i)), step);
        _mm_storeu_ps(v + i, vv);
        _mm_storeu_ps(p + i, _mm_add_ps(_mm_loadu_ps(p + i), vv));
      } else {
        _mm_storeu_ps(p + i, _mm_sub_ps(_mm_loadu_ps(p + i), step));
      }
    }
  }
#endif
  for (; i < n; ++i) {
    a[i] += g[i] * g[i];
    const scalar_t step = lr * (g[i] / std::sqrt(a[i] + eps));
    if (v != nullptr) {
      v[i] = mu * v[i] - step;
      p[i] += v[i];
    } else {
      p[i] -= step;
    }
  }
}

// adagrad_span with 8 float lanes of AVX first (the same operations in the same order, so the
// same results bit for bit); double, and the tail, go to adagrad_span.
template <typename scalar_t>
GRU4REC_TARGET_AVX2 void adagrad_span_avx2(scalar_t* __restrict__ p, scalar_t* __restrict__ a,
                                           scalar_t* __restrict__ v, const scalar_t* __restrict__ g, int64_t n,
                                           scalar_t lr, scalar_t mu, scalar_t eps) {
  int64_t i = 0;
#if GRU4REC_HAS_AVX2_BUILD
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m256 vlr = _mm256_set1_ps(lr), vmu = _mm256_set1_ps(mu), veps = _mm256_set1_ps(eps);
    for (; i + 8 <= n; i += 8) {
      const __m256 gg = _mm256_loadu_ps(g + i);
      const __m256 aa = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_mul_ps(gg, gg));
      _mm256_storeu_ps(a + i, aa);
      const __m256 step = _mm256_mul_ps(vlr, _mm256_div_ps(gg, _mm256_sqrt_ps(_mm256_add_ps(aa, veps))));
      if (v != nullptr) {
        const __m256 vv = _mm256_sub_ps(_mm256_mul_ps(vmu, _mm256_loadu_ps(v + i)), step);
        _mm256_storeu_ps(v + i, vv);
        _mm256_storeu_ps(p + i, _mm256_add_ps(_mm256_loadu_ps(p + i), vv));
      } else {
        _mm256_storeu_ps(p + i, _mm256_sub_ps(_mm256_loadu_ps(p + i), step));
      }
    }
  }
#endif
  adagrad_span<scalar_t>(p + i, a + i, v ? v + i : nullptr, g + i, n - i, lr, mu, eps);
}

// adagrad_span_avx2 with 16 float lanes of AVX-512 first (the same operations in the same order:
// the divides and square roots, which bound this loop, take half the instructions).
template <typename scalar_t>
GRU4REC_TARGET_AVX512 void adagrad_span_avx512(scalar_t* __restrict__ p, scalar_t* __restrict__ a,
                                               scalar_t* __restrict__ v, const scalar_t* __restrict__ g,
                                               int64_t n, scalar_t lr, scalar_t mu, scalar_t eps) {
  int64_t i = 0;
#if GRU4REC_HAS_AVX2_BUILD
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m512 vlr = _mm512_set1_ps(lr), vmu = _mm512_set1_ps(mu), veps = _mm512_set1_ps(eps);
    for (; i + 16 <= n; i += 16) {
      const __m512 gg = _mm512_loadu_ps(g + i);
      const __m512 aa = _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_mul_ps(gg, gg));
      _mm512_storeu_ps(a + i, aa);
      const __m512 step = _mm512_mul_ps(vlr, _mm512_div_ps(gg, _mm512_sqrt_ps(_mm512_add_ps(aa, veps))));
      if (v != nullptr) {
        const __m512 vv = _mm512_sub_ps(_mm512_mul_ps(vmu, _mm512_loadu_ps(v + i)), step);
        _mm512_storeu_ps(v + i, vv);
        _mm512_storeu_ps(p + i, _mm512_add_ps(_mm512_loadu_ps(p + i), vv));
      } else {
        _mm512_storeu_ps(p + i, _mm512_sub_ps(_mm512_loadu_ps(p + i), step));
      }
    }
  }
#endif
  adagrad_span_avx2<scalar_t>(p + i, a + i, v ? v + i : nullptr, g + i, n - i, lr, mu, eps);
}

// The best span update this CPU runs.
template <typename scalar_t>
void adagrad_span_best(scalar_t* p, scalar_t* a, scalar_t* v, const scalar_t* g, int64_t n, scalar_t lr,
                       scalar_t mu, scalar_t eps) {
  if (cpu_has_avx512()) {
    adagrad_span_avx512<scalar_t>(p, a, v, g, n, lr, mu, eps);
  } else if (cpu_has_avx2()) {
    adagrad_span_avx2<scalar_t>(p, a, v, g, n, lr, mu, eps);
  } else {
    adagrad_span<scalar_t>(p, a, v, g, n, lr, mu, eps);
  }
}

// The state (acc, mom) and arithmetic type of a parameter type: float for Half and BFloat16.
template <typename scalar_t>
using state_t = at::opmath_type<scalar_t>;

// One row of D elements at p/a/v with element stride s (s == 1: contiguous), updated with the
// summed gradient g [D] (state type). A float or double row with s == 1 runs adagrad_span_best in
// place (the fast path); otherwise the row is gathered into state-type buffers, updated by the
// same span function, and written back (Half and BFloat16 rounded once, at the end).
template <typename scalar_t>
struct RowUpdate {
  using S = state_t<scalar_t>;
  std::vector<S> p, a, v;

  void operator()(scalar_t* pr, S* ar, S* vr, int64_t s, const S* g, int64_t D, S lr, S mu, S eps) {
    if constexpr (std::is_same_v<scalar_t, S>) {
      if (s == 1) {
        adagrad_span_best<S>(pr, ar, vr, g, D, lr, mu, eps);
        return;
      }
    }
    p.resize(D);
    a.resize(D);
    v.resize(vr != nullptr ? D : 0);
    for (int64_t d = 0; d < D; ++d) {
      p[d] = static_cast<S>(pr[d * s]);
      a[d] = ar[d * s];
      if (vr != nullptr) v[d] = vr[d * s];
    }
    adagrad_span_best<S>(p.data(), a.data(), vr != nullptr ? v.data() : nullptr, g, D, lr, mu, eps);
    for (int64_t d = 0; d < D; ++d) {
      pr[d * s] = static_cast<scalar_t>(p[d]);
      ar[d * s] = a[d];
      if (vr != nullptr) vr[d * s] = v[d];
    }
  }
};

// param [N, D] (scalar_t) and acc/mom [N, D] (state type), all with element strides (s0, s1);
// indices [M] (negative: skipped), rows [M, D] contiguous: row-sparse Adagrad-momentum, in place.
// Duplicates are summed in the state type, in order of appearance.
template <typename scalar_t>
void sparse_adagrad_rows(scalar_t* param, state_t<scalar_t>* acc, state_t<scalar_t>* mom, int64_t s0, int64_t s1,
                         const int64_t* idx, const scalar_t* rows, int64_t N, int64_t M, int64_t D,
                         state_t<scalar_t> lr, state_t<scalar_t> momentum, state_t<scalar_t> eps) {
  using S = state_t<scalar_t>;
  for (int64_t i = 0; i < M; ++i) {
    TORCH_CHECK(idx[i] < N, "sparse_adagrad_: indices[", i, "] = ", idx[i], " is out of range [0, ", N,
                ") (negative indices are skipped)");
  }
  TORCH_CHECK(M < (int64_t(1) << 31), "sparse_adagrad_: at most 2^31 - 1 indices per call, got ", M);
  IdGroups groups;
  groups.build(idx, M, N);  // negative indices belong to no group
  const int64_t G = groups.size();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  // The touched rows are scattered over tables larger than the caches: fetch a few groups ahead
  // (rows of contiguous elements only).
  constexpr int64_t kAhead = 8;
  const auto prefetch_row = [&](const void* base, int64_t bytes) {
    const char* c = static_cast<const char*>(base);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 1, 1);
  };
  cpu::parallel_for(G, grain, [&](int64_t begin, int64_t end) {
    std::vector<S> g(D);
    RowUpdate<scalar_t> update;
    for (int64_t gi = begin; gi < end; ++gi) {
      if (s1 == 1 && gi + kAhead < end) {
        const int64_t row_ahead = idx[groups.first[gi + kAhead]];
        prefetch_row(param + row_ahead * s0, D * static_cast<int64_t>(sizeof(scalar_t)));
        prefetch_row(acc + row_ahead * s0, D * static_cast<int64_t>(sizeof(S)));
        if (momentum > 0) prefetch_row(mom + row_ahead * s0, D * static_cast<int64_t>(sizeof(S)));
      }
      const int64_t i0 = groups.first[gi];
      const int64_t row = idx[i0];
      const S* gsum;
      if (std::is_same_v<scalar_t, S> && groups.next[i0] < 0) {
        gsum = reinterpret_cast<const S*>(rows + i0 * D);  // a row touched once: its gradient as is
      } else {
        const scalar_t* first = rows + i0 * D;
        for (int64_t d = 0; d < D; ++d) g[d] = static_cast<S>(first[d]);
        for (int64_t j = groups.next[i0]; j >= 0; j = groups.next[j]) {
          const scalar_t* src = rows + j * D;
          for (int64_t d = 0; d < D; ++d) g[d] += static_cast<S>(src[d]);
        }
        gsum = g.data();
      }
      update(param + row * s0, acc + row * s0, momentum > 0 ? mom + row * s0 : nullptr, s1, gsum, D, lr, momentum,
             eps);
    }
  });
}

void sparse_adagrad_cpu(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, const at::Tensor& indices,
                        const at::Tensor& rows, double lr, double momentum, double eps) {
  check_sparse_adagrad_args(param, acc, mom, indices, rows, lr, momentum, eps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "sparse_adagrad_cpu", [&] {
    using S = state_t<scalar_t>;
    sparse_adagrad_rows<scalar_t>(param.data_ptr<scalar_t>(), acc.data_ptr<S>(),
                                  momentum > 0 ? mom.data_ptr<S>() : nullptr, param.stride(0), param.stride(1),
                                  indices.data_ptr<int64_t>(), rows.data_ptr<scalar_t>(), param.size(0),
                                  indices.size(0), param.size(1), static_cast<S>(lr), static_cast<S>(momentum),
                                  static_cast<S>(eps));
  });
}

// sparse_adagrad_pair_ on the CPU: the two tables' updates, one after the other (the CUDA kernel
// shares one sort between them; the results are the same).
void sparse_adagrad_pair_cpu(at::Tensor& param, at::Tensor& acc, at::Tensor& mom, at::Tensor& param2,
                             at::Tensor& acc2, at::Tensor& mom2, const at::Tensor& indices, const at::Tensor& rows,
                             const at::Tensor& rows2, double lr, double momentum, double eps) {
  check_sparse_adagrad_pair_args(param, acc, mom, param2, acc2, mom2, indices, rows, rows2, lr, momentum, eps);
  sparse_adagrad_cpu(param, acc, mom, indices, rows, lr, momentum, eps);
  sparse_adagrad_cpu(param2, acc2, mom2, indices.narrow(0, 0, rows2.size(0)), rows2, lr, momentum, eps);
}

// p, g [n] (scalar_t), a, v [n] (state type): the dense Adagrad-momentum update of one contiguous
// tensor, in place. Half and BFloat16 go through float buffers of kChunk elements.
template <typename scalar_t>
void dense_adagrad_span(scalar_t* __restrict__ p, state_t<scalar_t>* __restrict__ a,
                        state_t<scalar_t>* __restrict__ v, const scalar_t* __restrict__ g, int64_t n,
                        state_t<scalar_t> lr, state_t<scalar_t> momentum, state_t<scalar_t> eps) {
  using S = state_t<scalar_t>;
  cpu::parallel_for(n, 16384, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, S>) {
      adagrad_span_best<S>(p + begin, a + begin, momentum > 0 ? v + begin : nullptr, g + begin, end - begin, lr,
                           momentum, eps);
    } else {
      constexpr int64_t kChunk = 256;
      S pb[kChunk], gb[kChunk];
      for (int64_t i = begin; i < end; i += kChunk) {
        const int64_t len = std::min(kChunk, end - i);
        for (int64_t j = 0; j < len; ++j) {
          pb[j] = static_cast<S>(p[i + j]);
          gb[j] = static_cast<S>(g[i + j]);
        }
        adagrad_span_best<S>(pb, a + i, momentum > 0 ? v + i : nullptr, gb, len, lr, momentum, eps);
        for (int64_t j = 0; j < len; ++j) p[i + j] = static_cast<scalar_t>(pb[j]);
      }
    }
  });
}

void dense_adagrad_cpu(at::TensorList params, at::TensorList accs, at::TensorList moms, at::TensorList grads,
                       double lr, double momentum, double eps) {
  check_dense_adagrad_args(params, accs, moms, grads, lr, momentum, eps);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "dense_adagrad_cpu", [&] {
      using S = state_t<scalar_t>;
      dense_adagrad_span<scalar_t>(p.data_ptr<scalar_t>(), accs[i].data_ptr<S>(),
                                   momentum > 0 ? moms[i].data_ptr<S>() : nullptr, grads[i].data_ptr<scalar_t>(),
                                   p.numel(), static_cast<S>(lr), static_cast<S>(momentum), static_cast<S>(eps));
    });
  }
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) {
  m.impl("sparse_adagrad_", &gru4rec::sparse_adagrad_cpu);
  m.impl("dense_adagrad_", &gru4rec::dense_adagrad_cpu);
  m.impl("sparse_adagrad_pair_", &gru4rec::sparse_adagrad_pair_cpu);
}
