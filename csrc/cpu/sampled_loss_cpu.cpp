// CPU kernels of gru4rec::sampled_loss_forward/backward: the score GEMM and the backward GEMMs go
// through ATen (BLAS); the fused per-row pass (activation, loss terms, reductions, dL/dscore) is
// here, parallel over rows (cpu::parallel_for): float, double, and bfloat16 (whose rows are
// converted to float, computed in float, and rounded once when dL/dscore is written back).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

// Our code below may speculate float ops (GCC's default -ftrapping-math forbids it), which lets the
// loops with branch-free selects vectorise. FP exceptions are not trapped in torch.
#pragma GCC optimize("no-trapping-math")

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/activation_cpu.h"
#include "cpu/cpu_isa.h"
#include "cpu/thread_pool.h"
#include "loss_math.h"

namespace gru4rec {
namespace {

namespace lm = loss_math;

// ---- Exp and log1p over arrays. For float these are our own vector code: 8 lanes of AVX2 where
// the CPU has it, then 4 of SSE2 (bit for bit the same results): libm's expf / log1pf are scalar
// calls, and GCC does not vectorise the selects around them under -ftrapping-math. double (and
// the last n % 4 floats) use libm.

#if defined(__SSE2__)
// exp of 4 floats: x = n ln2 + f, |f| <= ln2/2 (Cody-Waite split of ln2), a degree-7 Taylor
// polynomial for exp(f) (truncation error < 1e-8), 2^n from the exponent bits; 0 below -87.
// NaN stays NaN (min/max return their second operand when one is NaN).
GRU4REC_ROWS_INLINE inline __m128 exp_ps(__m128 x) {
  const __m128 lo = _mm_set1_ps(-87.0f);
  const __m128 xc = _mm_min_ps(_mm_set1_ps(88.0f), _mm_max_ps(lo, x));
  const __m128i ni = _mm_cvtps_epi32(_mm_mul_ps(xc, _mm_set1_ps(1.44269504088896341f)));
  const __m128 n = _mm_cvtepi32_ps(ni);  // round to nearest
  const __m128 f = _mm_add_ps(_mm_sub_ps(xc, _mm_mul_ps(n, _mm_set1_ps(0.693359375f))),
                              _mm_mul_ps(n, _mm_set1_ps(2.12194440e-4f)));
  __m128 q = _mm_set1_ps(1.0f / 5040.0f);
  const float coef[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  for (float c : coef) q = _mm_add_ps(_mm_mul_ps(q, f), _mm_set1_ps(c));
  const __m128 two_n = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(ni, _mm_set1_epi32(127)), 23));
  return _mm_and_ps(_mm_mul_ps(q, two_n), _mm_cmpnlt_ps(x, lo));
}

// log(1 + e) of 4 floats in [0, 1]: log1p(y) = 2 atanh(y / (2 + y)) as an odd series in
// t = y / (2 + y), |t| <= 0.172 (error < 1e-9); above sqrt(2) - 1, 1 + e = 2 (1 + (e - 1) / 2).
GRU4REC_ROWS_INLINE inline __m128 log1p_unit_ps(__m128 e) {
  const __m128 hi = _mm_cmpgt_ps(e, _mm_set1_ps(0.41421356f));
  const __m128 y_hi = _mm_mul_ps(_mm_sub_ps(e, _mm_set1_ps(1.0f)), _mm_set1_ps(0.5f));
  const __m128 y = _mm_or_ps(_mm_and_ps(hi, y_hi), _mm_andnot_ps(hi, e));
  const __m128 t = _mm_div_ps(y, _mm_add_ps(_mm_set1_ps(2.0f), y));
  const __m128 t2 = _mm_mul_ps(t, t);
  __m128 q = _mm_set1_ps(1.0f / 9.0f);
  const float coef[] = {1.0f / 7.0f, 1.0f / 5.0f, 1.0f / 3.0f, 1.0f};
  for (float c : coef) q = _mm_add_ps(_mm_mul_ps(q, t2), _mm_set1_ps(c));
  const __m128 series = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(2.0f), t), q);
  return _mm_add_ps(_mm_and_ps(hi, _mm_set1_ps(0.69314718055994531f)), series);
}

// expm1(y) of 4 floats y <= 0: a degree-9 Taylor polynomial above -0.5 (error < 3e-10, no
// cancellation), exp(y) - 1 below (|result| > 0.39 there).
GRU4REC_ROWS_INLINE inline __m128 expm1_neg_ps(__m128 y) {
  __m128 q = _mm_set1_ps(1.0f / 362880.0f);
  const float coef[] = {1.0f / 40320.0f, 1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f,
                        1.0f / 24.0f,    1.0f / 6.0f,    0.5f,          1.0f};
  for (float c : coef) q = _mm_add_ps(_mm_mul_ps(q, y), _mm_set1_ps(c));
  const __m128 small = _mm_mul_ps(q, y);
  const __m128 big = _mm_sub_ps(exp_ps(y), _mm_set1_ps(1.0f));
  const __m128 is_small = _mm_cmpgt_ps(y, _mm_set1_ps(-0.5f));
  return _mm_or_ps(_mm_and_ps(is_small, small), _mm_andnot_ps(is_small, big));
}

// The final activation of 4 floats: tanh(x) = sign(x) * -m / (2 + m) with m = expm1(-2|x|);
// elu(x) = x > 0 ? x : alpha expm1(x).
GRU4REC_ROWS_INLINE inline __m128 activate_ps(__m128 x, int64_t activation, float alpha) {
  const __m128 sign = _mm_set1_ps(-0.0f);
  if (activation == lm::kTanh) {
    const __m128 m = expm1_neg_ps(_mm_mul_ps(_mm_set1_ps(-2.0f), _mm_andnot_ps(sign, x)));
    const __m128 t = _mm_div_ps(_mm_xor_ps(m, sign), _mm_add_ps(_mm_set1_ps(2.0f), m));
    return _mm_or_ps(t, _mm_and_ps(x, sign));
  }
  const __m128 neg = _mm_min_ps(_mm_setzero_ps(), x);  // NaN stays NaN
  const __m128 e = _mm_mul_ps(_mm_set1_ps(alpha), expm1_neg_ps(neg));
  const __m128 pos = _mm_cmpgt_ps(x, _mm_setzero_ps());
  return _mm_or_ps(_mm_and_ps(pos, x), _mm_andnot_ps(pos, e));
}
#endif

#if GRU4REC_HAS_AVX2_BUILD
// ---- 8-lane AVX2 twins of the functions above: the same operations in the same order, built
// for AVX2+FMA like the row pass that calls them (GCC fuses their multiply-adds there too). Each
// *_avx2 array function does the first n - n % 8 elements and returns that count; the callers
// finish with the 4-lane code.

GRU4REC_TARGET_AVX2 inline __m256 exp_ps8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
  const __m256i ni = _mm256_cvtps_epi32(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)));
  const __m256 n = _mm256_cvtepi32_ps(ni);
  const __m256 f = _mm256_add_ps(_mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(2.12194440e-4f)));
  __m256 q = _mm256_set1_ps(1.0f / 5040.0f);
  const float coef[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  for (float c : coef) q = _mm256_add_ps(_mm256_mul_ps(q, f), _mm256_set1_ps(c));
  const __m256 two_n =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  return _mm256_and_ps(_mm256_mul_ps(q, two_n), _mm256_cmp_ps(x, lo, _CMP_NLT_US));
}

GRU4REC_TARGET_AVX2 inline __m256 log1p_unit_ps8(__m256 e) {
  const __m256 hi = _mm256_cmp_ps(e, _mm256_set1_ps(0.41421356f), _CMP_GT_OS);
  const __m256 y_hi = _mm256_mul_ps(_mm256_sub_ps(e, _mm256_set1_ps(1.0f)), _mm256_set1_ps(0.5f));
  const __m256 y = _mm256_or_ps(_mm256_and_ps(hi, y_hi), _mm256_andnot_ps(hi, e));
  const __m256 t = _mm256_div_ps(y, _mm256_add_ps(_mm256_set1_ps(2.0f), y));
  const __m256 t2 = _mm256_mul_ps(t, t);
  __m256 q = _mm256_set1_ps(1.0f / 9.0f);
  const float coef[] = {1.0f / 7.0f, 1.0f / 5.0f, 1.0f / 3.0f, 1.0f};
  for (float c : coef) q = _mm256_add_ps(_mm256_mul_ps(q, t2), _mm256_set1_ps(c));
  const __m256 series = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), t), q);
  return _mm256_add_ps(_mm256_and_ps(hi, _mm256_set1_ps(0.69314718055994531f)), series);
}

GRU4REC_TARGET_AVX2 inline __m256 expm1_neg_ps8(__m256 y) {
  __m256 q = _mm256_set1_ps(1.0f / 362880.0f);
  const float coef[] = {1.0f / 40320.0f, 1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f,
                        1.0f / 24.0f,    1.0f / 6.0f,    0.5f,          1.0f};
  for (float c : coef) q = _mm256_add_ps(_mm256_mul_ps(q, y), _mm256_set1_ps(c));
  const __m256 small = _mm256_mul_ps(q, y);
  const __m256 big = _mm256_sub_ps(exp_ps8(y), _mm256_set1_ps(1.0f));
  const __m256 is_small = _mm256_cmp_ps(y, _mm256_set1_ps(-0.5f), _CMP_GT_OS);
  return _mm256_or_ps(_mm256_and_ps(is_small, small), _mm256_andnot_ps(is_small, big));
}

GRU4REC_TARGET_AVX2 inline __m256 activate_ps8(__m256 x, int64_t activation, float alpha) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  if (activation == lm::kTanh) {
    const __m256 m = expm1_neg_ps8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_andnot_ps(sign, x)));
    const __m256 t = _mm256_div_ps(_mm256_xor_ps(m, sign), _mm256_add_ps(_mm256_set1_ps(2.0f), m));
    return _mm256_or_ps(t, _mm256_and_ps(x, sign));
  }
  const __m256 neg = _mm256_min_ps(_mm256_setzero_ps(), x);
  const __m256 e = _mm256_mul_ps(_mm256_set1_ps(alpha), expm1_neg_ps8(neg));
  const __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OS);
  return _mm256_or_ps(_mm256_and_ps(pos, x), _mm256_andnot_ps(pos, e));
}

GRU4REC_TARGET_AVX2 __attribute__((noinline)) int64_t activate_array_avx2(const float* x, float* r, int64_t n,
                                                                             int64_t activation, float alpha) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(r + j, activate_ps8(_mm256_loadu_ps(x + j), activation, alpha));
  return j;
}

GRU4REC_TARGET_AVX2 __attribute__((noinline)) int64_t exp_array_avx2(const float* in, float* out, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(out + j, exp_ps8(_mm256_loadu_ps(in + j)));
  return j;
}

GRU4REC_TARGET_AVX2 __attribute__((noinline)) int64_t log1p_unit_array_avx2(const float* in, float* out,
                                                                               int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(out + j, log1p_unit_ps8(_mm256_loadu_ps(in + j)));
  return j;
}

// ---- 16-lane AVX-512 twins of the 8-lane functions: the same operations in the same order (the
// selects through masks), so the same results bit for bit; the array functions do the first
// n - n % 16 elements and the 8- and 4-lane code finishes.

GRU4REC_TARGET_AVX512 inline __m512 exp_ps16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(lo, x));
  const __m512i ni = _mm512_cvtps_epi32(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)));
  const __m512 n = _mm512_cvtepi32_ps(ni);
  const __m512 f = _mm512_add_ps(_mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
  __m512 q = _mm512_set1_ps(1.0f / 5040.0f);
  const float coef[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  for (float c : coef) q = _mm512_add_ps(_mm512_mul_ps(q, f), _mm512_set1_ps(c));
  const __m512 two_n =
      _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_US), _mm512_mul_ps(q, two_n));
}

GRU4REC_TARGET_AVX512 inline __m512 log1p_unit_ps16(__m512 e) {
  const __mmask16 hi = _mm512_cmp_ps_mask(e, _mm512_set1_ps(0.41421356f), _CMP_GT_OS);
  const __m512 y_hi = _mm512_mul_ps(_mm512_sub_ps(e, _mm512_set1_ps(1.0f)), _mm512_set1_ps(0.5f));
  const __m512 y = _mm512_mask_blend_ps(hi, e, y_hi);
  const __m512 t = _mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(2.0f), y));
  const __m512 t2 = _mm512_mul_ps(t, t);
  __m512 q = _mm512_set1_ps(1.0f / 9.0f);
  const float coef[] = {1.0f / 7.0f, 1.0f / 5.0f, 1.0f / 3.0f, 1.0f};
  for (float c : coef) q = _mm512_add_ps(_mm512_mul_ps(q, t2), _mm512_set1_ps(c));
  const __m512 series = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), t), q);
  return _mm512_add_ps(_mm512_maskz_mov_ps(hi, _mm512_set1_ps(0.69314718055994531f)), series);
}

GRU4REC_TARGET_AVX512 inline __m512 expm1_neg_ps16(__m512 y) {
  __m512 q = _mm512_set1_ps(1.0f / 362880.0f);
  const float coef[] = {1.0f / 40320.0f, 1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f,
                        1.0f / 24.0f,    1.0f / 6.0f,    0.5f,          1.0f};
  for (float c : coef) q = _mm512_add_ps(_mm512_mul_ps(q, y), _mm512_set1_ps(c));
  const __m512 small = _mm512_mul_ps(q, y);
  const __m512 big = _mm512_sub_ps(exp_ps16(y), _mm512_set1_ps(1.0f));
  const __mmask16 is_small = _mm512_cmp_ps_mask(y, _mm512_set1_ps(-0.5f), _CMP_GT_OS);
  return _mm512_mask_blend_ps(is_small, big, small);
}

GRU4REC_TARGET_AVX512 inline __m512 activate_ps16(__m512 x, int64_t activation, float alpha) {
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i xi = _mm512_castps_si512(x);
  if (activation == lm::kTanh) {
    const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
    const __m512 m = expm1_neg_ps16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ax));
    const __m512 neg_m = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(m), sign));
    const __m512 t = _mm512_div_ps(neg_m, _mm512_add_ps(_mm512_set1_ps(2.0f), m));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(xi, sign)));
  }
  const __m512 neg = _mm512_min_ps(_mm512_setzero_ps(), x);
  const __m512 e = _mm512_mul_ps(_mm512_set1_ps(alpha), expm1_neg_ps16(neg));
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OS);
  return _mm512_mask_blend_ps(pos, e, x);
}

GRU4REC_TARGET_AVX512 __attribute__((noinline)) int64_t activate_array_avx512(const float* x, float* r,
                                                                                 int64_t n, int64_t activation,
                                                                                 float alpha) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(r + j, activate_ps16(_mm512_loadu_ps(x + j), activation, alpha));
  return j;
}

GRU4REC_TARGET_AVX512 __attribute__((noinline)) int64_t exp_array_avx512(const float* in, float* out, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(out + j, exp_ps16(_mm512_loadu_ps(in + j)));
  return j;
}

GRU4REC_TARGET_AVX512 __attribute__((noinline)) int64_t log1p_unit_array_avx512(const float* in, float* out,
                                                                                   int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(out + j, log1p_unit_ps16(_mm512_loadu_ps(in + j)));
  return j;
}

// How many leading elements the AVX2 array functions take (0 on a CPU without AVX2), and the
// AVX-512 ones before them.
#define GRU4REC_AVX2_HEAD(call) (cpu_has_avx2() ? (call) : int64_t(0))
#define GRU4REC_AVX512_HEAD(call) (cpu_has_avx512() ? (call) : int64_t(0))
#else
#define GRU4REC_AVX2_HEAD(call) int64_t(0)
#define GRU4REC_AVX512_HEAD(call) int64_t(0)
#endif

// r[j] = act(x[j]), j < n, for the tanh and elu codes (linear is a copy).
GRU4REC_ROWS_INLINE inline void activate_array(const float* x, float* r, int64_t n, int64_t activation, float alpha) {
  int64_t j = GRU4REC_AVX512_HEAD(activate_array_avx512(x, r, n, activation, alpha));
  j += GRU4REC_AVX2_HEAD(activate_array_avx2(x + j, r + j, n - j, activation, alpha));
#if defined(__SSE2__)
  for (; j + 4 <= n; j += 4) _mm_storeu_ps(r + j, activate_ps(_mm_loadu_ps(x + j), activation, alpha));
#endif
  for (; j < n; ++j) r[j] = lm::activate(x[j], activation, alpha);
}
GRU4REC_ROWS_INLINE inline void activate_array(const double* x, double* r, int64_t n, int64_t activation,
                           double alpha) {
  for (int64_t j = 0; j < n; ++j) r[j] = lm::activate(x[j], activation, alpha);
}

// out[j] = exp(in[j]), j < n (in == out allowed).
GRU4REC_ROWS_INLINE inline void exp_array(const float* in, float* out, int64_t n) {
  int64_t j = GRU4REC_AVX512_HEAD(exp_array_avx512(in, out, n));
  j += GRU4REC_AVX2_HEAD(exp_array_avx2(in + j, out + j, n - j));
#if defined(__SSE2__)
  for (; j + 4 <= n; j += 4) _mm_storeu_ps(out + j, exp_ps(_mm_loadu_ps(in + j)));
#endif
  for (; j < n; ++j) out[j] = std::exp(in[j]);
}
GRU4REC_ROWS_INLINE inline void exp_array(const double* in, double* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = std::exp(in[j]);
}

// out[j] = log(1 + in[j]) for in[j] in [0, 1], j < n (in == out allowed).
GRU4REC_ROWS_INLINE inline void log1p_unit_array(const float* in, float* out, int64_t n) {
  int64_t j = GRU4REC_AVX512_HEAD(log1p_unit_array_avx512(in, out, n));
  j += GRU4REC_AVX2_HEAD(log1p_unit_array_avx2(in + j, out + j, n - j));
#if defined(__SSE2__)
  for (; j + 4 <= n; j += 4) _mm_storeu_ps(out + j, log1p_unit_ps(_mm_loadu_ps(in + j)));
#endif
  for (; j < n; ++j) out[j] = std::log1p(in[j]);
}
GRU4REC_ROWS_INLINE inline void log1p_unit_array(const double* in, double* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = std::log1p(in[j]);
}

// Sum of x[0..n) in double over float partial sums of 256 (vectorised, and accurate: sequential
// float sums over thousands of columns lose digits).
template <typename acc_t>
GRU4REC_ROWS_INLINE inline double row_sum(const acc_t* x, int64_t n) {
  double total = 0;
  for (int64_t j0 = 0; j0 < n; j0 += 256) {
    const int64_t j1 = std::min(n, j0 + 256);
    acc_t part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t j = j0; j < j1; ++j) part += x[j];
    total += part;
  }
  return total;
}

// Max of x[0..n) (vectorised).
template <typename acc_t>
GRU4REC_ROWS_INLINE inline acc_t row_max(const acc_t* x, int64_t n) {
  acc_t m = std::numeric_limits<acc_t>::lowest();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = x[j];
    m = v > m ? v : m;
  }
  return m;
}

// Per-thread scratch of a row: six per-column terms of the loss, [C] each.
template <typename acc_t>
struct RowScratch {
  explicit RowScratch(int64_t C) : buf(6 * C), a(buf.data()), b(a + C), c(b + C), d(c + C),
                                   e(d + C), f(e + C) {}
  std::vector<acc_t> buf;
  acc_t *a, *b, *c, *d, *e, *f;
};

// One row's loss (unscaled) and dL/dr_j (unscaled) written to g[0..C), for the loss codes.
// r: [C] activated scores; nm: [C] 1 for the row's negatives, else 0 (not read when all_neg,
// cross-entropy only: every column but pos is a negative); pos: the row index (its
// positive column); ns: number of negatives; shift: [C] logq * log q_j or null.
// Returns false when the row has no negatives and the loss needs them (the row then counts 0).
// The exps and logs run over whole arrays (exp_array, log1p_unit_array); the loops around them
// are plain arithmetic; sums go through row_sum. Off the negatives every term is selected to 0.
template <int kLoss, typename acc_t>
GRU4REC_ROWS_INLINE inline bool row_loss_grad(const acc_t* __restrict__ r, const acc_t* __restrict__ nm, bool all_neg, int64_t C,
                   int64_t pos, int64_t ns, const acc_t* __restrict__ shift,
                   const lm::LossParams<acc_t>& p, RowScratch<acc_t>& s, acc_t* __restrict__ g,
                   acc_t& loss_out) {
  const acc_t ri = r[pos];
  const acc_t lowest = std::numeric_limits<acc_t>::lowest();
  const acc_t zero = acc_t(0), one = acc_t(1);
  acc_t* __restrict__ a = s.a;
  acc_t* __restrict__ b = s.b;
  acc_t* __restrict__ c = s.c;
  acc_t* __restrict__ d = s.d;
  acc_t* __restrict__ e5 = s.e;
  acc_t* __restrict__ f6 = s.f;
  if constexpr (kLoss == lm::kCrossEntropy) {
    // z_j = r_j - logq log q_j over the positive and the negatives; L = lse(z) - z_i.
    // all_neg: every column takes part (no accidental-hit masking), so no selects are needed.
    if (shift) {
      for (int64_t j = 0; j < C; ++j) a[j] = r[j] - shift[j];  // z
    } else {
      std::copy(r, r + C, a);
    }
    const acc_t zi = a[pos];
    const acc_t* zsel = a;
    if (!all_neg) {
      for (int64_t j = 0; j < C; ++j) b[j] = nm[j] != zero ? a[j] : lowest;
      b[pos] = zi;
      zsel = b;
    }
    const acc_t m = row_max(zsel, C);
    for (int64_t j = 0; j < C; ++j) g[j] = a[j] - m;
    exp_array(g, g, C);
    if (!all_neg) {
      const acc_t e_pos = g[pos];
      for (int64_t j = 0; j < C; ++j) g[j] = nm[j] != zero ? g[j] : zero;
      g[pos] = e_pos;
    }
    const double Z = row_sum(g, C);
    const acc_t inv = static_cast<acc_t>(1.0 / Z);
    for (int64_t j = 0; j < C; ++j) g[j] *= inv;
    g[pos] -= one;
    loss_out = static_cast<acc_t>(m + std::log(Z) - zi);
    return true;
  }
  if (ns <= 0) return false;
  const acc_t inv_ns = one / static_cast<acc_t>(ns);
  if constexpr (kLoss == lm::kBPR) {
    // -(1/N_s) sum_j log sigmoid(r_i - r_j); dL/dr_j = sigmoid(r_j - r_i) / N_s.
    for (int64_t j = 0; j < C; ++j) {
      const acc_t dj = ri - r[j];
      a[j] = dj;
      b[j] = dj < zero ? dj : -dj;  // -|d|
    }
    exp_array(b, b, C);              // e = exp(-|d|)
    log1p_unit_array(b, c, C);       // log(1 + e)
    for (int64_t j = 0; j < C; ++j) {
      const acc_t dj = a[j], e = b[j], inv = one / (one + e), e_inv = e * inv;
      const bool nonneg = dj >= zero;
      const acc_t sig_neg = nonneg ? e_inv : inv;                // sigmoid(r_j - r_i)
      const acc_t log_sig = (nonneg ? zero : dj) - c[j];         // log sigmoid(r_i - r_j)
      const bool ng = nm[j] != zero;
      a[j] = ng ? -log_sig : zero;
      b[j] = ng ? sig_neg : zero;
      g[j] = b[j] * inv_ns;
    }
    g[pos] = static_cast<acc_t>(-row_sum(b, C)) * inv_ns;
    loss_out = static_cast<acc_t>(row_sum(a, C)) * inv_ns;
    return true;
  }
  if constexpr (kLoss == lm::kTop1 || kLoss == lm::kTop1Max) {
    // Per column: g_j = sigmoid(r_j - r_i) + sigmoid(r_j^2), its derivative in r_j, and
    // sigmoid'(r_j - r_i) (the derivative in r_i, negated).
    for (int64_t j = 0; j < C; ++j) {
      const acc_t dj = r[j] - ri;
      b[j] = dj < zero ? dj : -dj;  // -|r_j - r_i|
      c[j] = -r[j] * r[j];          // -|r_j^2|
    }
    exp_array(b, b, C);
    exp_array(c, c, C);
    for (int64_t j = 0; j < C; ++j) {
      const acc_t dj = r[j] - ri, ed = b[j], es = c[j];
      const acc_t inv_d = one / (one + ed), inv_s = one / (one + es);
      const acc_t sd = dj >= zero ? inv_d : ed * inv_d, gd = ed * inv_d * inv_d;
      const acc_t gs = es * inv_s * inv_s;  // sigmoid(r_j^2) = inv_s
      f6[j] = sd + inv_s;                   // g_j
      e5[j] = gd + acc_t(2) * r[j] * gs;    // d g_j / d r_j
      d[j] = gd;                            // sigmoid'(r_j - r_i)
    }
    if constexpr (kLoss == lm::kTop1) {
      // (1/N_s) sum_j g_j.
      for (int64_t j = 0; j < C; ++j) {
        const bool ng = nm[j] != zero;
        a[j] = ng ? f6[j] : zero;
        b[j] = ng ? d[j] : zero;
        g[j] = ng ? e5[j] * inv_ns : zero;
      }
      g[pos] = static_cast<acc_t>(-row_sum(b, C)) * inv_ns;
      loss_out = static_cast<acc_t>(row_sum(a, C)) * inv_ns;
      return true;
    }
  }
  // Softmax over the negatives: s_j = e_j / Z, e_j = exp(r_j - m) (in a).
  for (int64_t j = 0; j < C; ++j) a[j] = nm[j] != zero ? r[j] : lowest;
  const acc_t m = row_max(a, C);
  for (int64_t j = 0; j < C; ++j) a[j] = r[j] - m;
  exp_array(a, a, C);
  for (int64_t j = 0; j < C; ++j) a[j] = nm[j] != zero ? a[j] : zero;
  const double Z = row_sum(a, C);
  const acc_t invZ = static_cast<acc_t>(1.0 / Z);
  if constexpr (kLoss == lm::kTop1Max) {
    // L = sum_j s_j g_j; dL/dr_k = s_k (g_k - L + g_k'), dL/dr_i = -sum_j s_j sigmoid'(r_j - r_i).
    for (int64_t j = 0; j < C; ++j) {
      b[j] = a[j] * f6[j];  // e_j g_j
      c[j] = a[j] * d[j];   // e_j sigmoid'(r_j - r_i)
    }
    const acc_t G = static_cast<acc_t>(row_sum(b, C) / Z);
    for (int64_t j = 0; j < C; ++j) g[j] = a[j] * invZ * (f6[j] - G + e5[j]);
    g[pos] = static_cast<acc_t>(-row_sum(c, C) / Z);
    loss_out = G;
    return true;
  }
  // BPR-max: A = -log(sum_j s_j sigmoid(r_i - r_j) + 1e-24) in log form: with
  // v_j = r_j + log sigmoid(r_i - r_j), log sum_j s_j sigmoid(.) = lse(v) - lse_neg(r).
  // dA/dr_k = -rho (w_k sigmoid(r_i - r_k) - s_k), dA/dr_i = -rho sum_j w_j sigmoid(r_j - r_i),
  // w = softmax(v) over the negatives, rho = P / (P + 1e-24). Regulariser bpreg R,
  // R = sum_j s_j r_j^2, dR/dr_k = s_k (2 r_k + r_k^2 - R).
  for (int64_t j = 0; j < C; ++j) {
    const acc_t dj = ri - r[j];
    c[j] = dj;
    b[j] = dj < zero ? dj : -dj;  // -|d|
  }
  exp_array(b, b, C);         // e = exp(-|d|)
  log1p_unit_array(b, d, C);  // log(1 + e)
  for (int64_t j = 0; j < C; ++j) {
    const acc_t dj = c[j], e = b[j], inv = one / (one + e), e_inv = e * inv;
    const bool nonneg = dj >= zero;
    const acc_t sig = nonneg ? inv : e_inv, sig_neg = nonneg ? e_inv : inv;
    const acc_t v = r[j] + (nonneg ? zero : dj) - d[j];
    c[j] = sig;                         // sigmoid(r_i - r_j)
    d[j] = sig_neg;                     // sigmoid(r_j - r_i)
    b[j] = nm[j] != zero ? v : lowest;  // v_j
    e5[j] = a[j] * r[j] * r[j];         // e_j r_j^2
  }
  const acc_t mv = row_max(b, C);
  const double Q = row_sum(e5, C);
  for (int64_t j = 0; j < C; ++j) b[j] = nm[j] != zero ? b[j] - mv : acc_t(-100);
  exp_array(b, b, C);
  for (int64_t j = 0; j < C; ++j) {
    b[j] = nm[j] != zero ? b[j] : zero;  // w_j unnormalised
    f6[j] = b[j] * d[j];
  }
  const double sv = row_sum(b, C), tv = row_sum(f6, C);
  const acc_t lse = static_cast<acc_t>(mv + std::log(sv) - (m + std::log(Z)));
  const acc_t leps = lm::log_bprmax_eps<acc_t>();
  const acc_t rho = lm::sigmoid(lse - leps);
  const acc_t R = static_cast<acc_t>(Q / Z);
  const acc_t inv_sv = static_cast<acc_t>(1.0 / sv);
  const acc_t bpreg = p.bpreg;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t sk = a[j] * invZ;
    g[j] = -rho * (b[j] * inv_sv * c[j] - sk) + bpreg * sk * (acc_t(2) * r[j] + r[j] * r[j] - R);
  }
  g[pos] = -rho * static_cast<acc_t>(tv / sv);
  loss_out = -lm::log_add_exp(lse, leps) + bpreg * R;
  return true;
}

// Runs of an index map shorter than this on average are slower to copy than to index.
constexpr int64_t kMinMeanRun = 4;

// A run of an index map: positions [dst, dst + len) read [src, src + len).
struct IndexRun {
  int64_t dst, src, len;
};

// map [n] as runs of consecutive positions with consecutive values (map[i] == map[i - 1] + 1),
// or none (empty) when they average fewer than kMinMeanRun positions.
std::vector<IndexRun> long_runs(const int64_t* map, int64_t n) {
  int64_t count = n > 0 ? 1 : 0;
  for (int64_t i = 1; i < n; ++i) count += map[i] != map[i - 1] + 1;
  std::vector<IndexRun> runs;
  if (count * kMinMeanRun > n) return runs;
  runs.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0 && map[i] == map[i - 1] + 1) {
      ++runs.back().len;
    } else {
      runs.push_back({i, map[i], 1});
    }
  }
  return runs;
}

// The fused row pass: S [B,U] raw scores in, dL/dS (scaled by 1/B) out in place; cols [C] (the
// gathered row of each loss column) or null (then U = C and column j is row j); cand [U] int64,
// log_q [C] or null, valid [B] or null (an invalid row has no loss and its target column is no
// negative), row_loss [B] (scaled, accumulation type). With cols, a row's columns are gathered
// from S first and their gradients summed back per gathered row (in column order). bfloat16 rows
// are gathered into float (acc_t) buffers and written back once.
template <int kLoss, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void row_pass_cpu(scalar_t* S, const int64_t* cols, const int64_t* cand, const scalar_t* log_q,
                  const bool* valid, int64_t B, int64_t C, int64_t U, const lm::LossParams<acc_t>& p,
                  acc_t* row_loss) {
  constexpr bool kSame = std::is_same_v<scalar_t, acc_t>;  // float, double: work in place
  const bool gather = cols != nullptr || !kSame;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  bool all_valid = true;
  for (int64_t b = 0; valid && b < B; ++b) all_valid = all_valid && valid[b];
  // Otherwise every column but the row's own is a negative (cross-entropy then skips the selects).
  const bool need_nm = p.loss != lm::kCrossEntropy || p.mask_hits || !all_valid;
  // What every row shares, built once per call so that the per-row loops are branch-free:
  // each column's item (a row's accidental hits are the columns of its target item), 1 for a
  // column that can be a negative at all (0: an invalid row's target column), and with cols the
  // scatter plan of dL/dS: each gathered row's first column, whose value is written (C: none,
  // the row is 0), and the later columns of a repeated item, added to it in column order.
  std::vector<int64_t> item(C), first(cols ? U : 0, C), repeats;
  std::vector<acc_t> present(C, acc_t(1));
  for (int64_t j = 0; j < C; ++j) item[j] = cand[cols ? cols[j] : j];
  for (int64_t j = 0; j < std::min(B, C) && !all_valid; ++j) present[j] = valid[j] ? acc_t(1) : acc_t(0);
  for (int64_t j = 0; cols && j < C; ++j) {
    if (first[cols[j]] == C) {
      first[cols[j]] = j;
    } else {
      repeats.push_back(j);
    }
  }
  // Both maps as runs of consecutive positions that read consecutive positions: the per-row
  // gather of the columns' scores (column j reads gathered row cols[j]) and the scatter back (row
  // u reads column first[u]) copy whole runs, not one indexed element at a time, when the runs
  // are long (few items repeat among the samples: retailrocket's 2,128 columns have about 130
  // runs). Short runs cost more than the indexed loop (rsc15's 2,080 columns over 1,370 items:
  // about 1,160), which then stays.
  const std::vector<IndexRun> gather_runs = cols ? long_runs(cols, C) : std::vector<IndexRun>();
  const std::vector<IndexRun> scatter_runs = cols ? long_runs(first.data(), U) : std::vector<IndexRun>();
  cpu::parallel_for(B, grain, [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> s(C);
    // ds has one more element, a 0, for the gathered rows that no column scores.
    std::vector<acc_t> r(C), g(C), nm(C), shift(log_q ? C : 0), xs(gather ? C : 0),
        ds(gather ? C + 1 : 0, acc_t(0)), du(cols && !kSame ? U : 0);
    if (log_q)
      for (int64_t j = 0; j < C; ++j) shift[j] = p.logq * acc_t(log_q[j]);
    // The rows [b0, b1), compiled for the baseline ISA and for AVX2+FMA (run_best picks one).
    const auto rows = [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      scalar_t* row = S + b * U;
      if (valid && !valid[b]) {
        std::fill(row, row + U, scalar_t(0));
        row_loss[b] = 0;
        continue;
      }
      const acc_t* x = xs.data();  // the row's raw scores, one per column
      if (cols && gather_runs.empty()) {
        for (int64_t j = 0; j < C; ++j) xs[j] = acc_t(row[cols[j]]);
      } else if (cols) {
        acc_t* __restrict__ to = xs.data();
        const scalar_t* __restrict__ from = row;
        for (const IndexRun& run : gather_runs) {
          for (int64_t k = 0; k < run.len; ++k) to[run.dst + k] = acc_t(from[run.src + k]);
        }
      } else if constexpr (kSame) {
        x = row;
      } else {
        for (int64_t j = 0; j < C; ++j) xs[j] = acc_t(row[j]);
      }
      const int64_t target = item[b];  // the row's own column is column b
      int64_t ns = C - 1;
      if (p.activation == lm::kLinear) {
        std::copy(x, x + C, r.data());
      } else {
        activate_array(x, r.data(), C, p.activation, p.elu_alpha);
      }
      if (need_nm) {
        // Negatives: every present column but the row's own (column b) and, with mask_hits,
        // the other columns of its target item. An invalid row (epoch tail) is absent: its
        // target column is nobody's negative.
        const acc_t* __restrict__ pres = present.data();
        const int64_t* __restrict__ it = item.data();
        acc_t* __restrict__ m = nm.data();
        if (p.mask_hits) {
          for (int64_t j = 0; j < C; ++j) m[j] = it[j] == target ? acc_t(0) : pres[j];
        } else {
          std::copy(pres, pres + C, m);
        }
        m[b] = acc_t(0);
        ns = 0;
        for (int64_t j = 0; j < C; ++j) ns += m[j] != acc_t(0);
      }
      acc_t loss = 0;
      if (!row_loss_grad<kLoss, acc_t>(r.data(), nm.data(), !need_nm, C, b, ns,
                                log_q ? shift.data() : nullptr, p,
                                s, g.data(), loss)) {
        std::fill(row, row + U, scalar_t(0));
        row_loss[b] = 0;
        continue;
      }
      // dL/dS = dL/dr act'(S): tanh' = 1 - r^2, elu' = 1 above 0, else alpha exp(x) (computed
      // as such: r + alpha = alpha (expm1(x) + 1) loses every digit below x ~ -17 in float).
      acc_t* out = ds.data();  // without cols (float, double), x and out are the same row
      if constexpr (kSame) {
        if (!cols) out = row;
      }
      const acc_t scale = p.scale, alpha = p.elu_alpha;
      if (p.activation == lm::kLinear) {
        for (int64_t j = 0; j < C; ++j) out[j] = g[j] * scale;
      } else if (p.activation == lm::kTanh) {
        for (int64_t j = 0; j < C; ++j) out[j] = g[j] * (acc_t(1) - r[j] * r[j]) * scale;
      } else {
        acc_t* e = s.a;  // scratch: free once row_loss_grad has returned
        for (int64_t j = 0; j < C; ++j) e[j] = x[j] > acc_t(0) ? acc_t(0) : x[j];
        exp_array(e, e, C);
        for (int64_t j = 0; j < C; ++j) {
          const acc_t above = static_cast<acc_t>(x[j] > acc_t(0));  // branch-free select
          out[j] = g[j] * (above + (acc_t(1) - above) * alpha * e[j]) * scale;
        }
      }
      if (cols) {
        // Per gathered row: 0 + its columns' values in column order (the + 0 keeps a -0 sum +0).
        acc_t* sum = nullptr;
        if constexpr (kSame) {
          sum = row;
        } else {
          sum = du.data();
        }
        if (scatter_runs.empty()) {
          for (int64_t u = 0; u < U; ++u) sum[u] = acc_t(0) + ds[first[u]];
        } else {
          acc_t* __restrict__ to = sum;
          const acc_t* __restrict__ from = ds.data();
          for (const IndexRun& run : scatter_runs) {
            for (int64_t k = 0; k < run.len; ++k) to[run.dst + k] = acc_t(0) + from[run.src + k];
          }
        }
        for (const int64_t j : repeats) sum[cols[j]] += ds[j];
        if constexpr (!kSame) {
          for (int64_t u = 0; u < U; ++u) row[u] = scalar_t(du[u]);
        }
      } else if constexpr (!kSame) {
        for (int64_t j = 0; j < C; ++j) row[j] = scalar_t(ds[j]);
      }
      row_loss[b] = loss * scale;
    }
    };
    run_best(rows, begin, end);
  });
}

std::tuple<at::Tensor, at::Tensor> sampled_loss_forward_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const std::optional<at::Tensor>& columns) {
  const SampledLossDims d = check_sampled_loss_args(hidden, weight, bias, candidates, log_q, valid,
                                                    loss, activation, logq, columns, /*check_ids=*/true);
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "sampled_loss (CPU): hidden must be float32, float64 or bfloat16, got ", dtype);
  const at::Tensor h = hidden.contiguous();
  at::Tensor workspace = sampled_loss_scores(h, weight, bias, candidates, d);
  at::Tensor scores = workspace_grad_scores(workspace, d);
  const at::Tensor cand = candidates.contiguous();
  const bool use_logq = loss == loss_math::kCrossEntropy && logq > 0;
  const at::Tensor lq = use_logq ? log_q->contiguous() : at::Tensor();
  const at::Tensor vd = (valid.has_value() && valid->defined()) ? valid->contiguous() : at::Tensor();
  const at::Tensor cols = (columns.has_value() && columns->defined()) ? columns->contiguous() : at::Tensor();
  const auto acc_dtype = at::toOpMathType(dtype);
  at::Tensor row_loss = at::empty({d.B}, hidden.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "sampled_loss_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const lm::LossParams<acc_t> p{loss,
                                  activation,
                                  acc_t(elu_alpha),
                                  acc_t(bpreg),
                                  acc_t(logq),
                                  mask_hits,
                                  acc_t(1.0 / static_cast<double>(d.B))};
    // One instantiation per loss keeps each fused row pass small enough to optimise well.
    const auto run = [&](auto loss_tag) {
      row_pass_cpu<decltype(loss_tag)::value, scalar_t>(
          scores.data_ptr<scalar_t>(), cols.defined() ? cols.data_ptr<int64_t>() : nullptr,
          cand.data_ptr<int64_t>(), use_logq ? lq.data_ptr<scalar_t>() : nullptr,
          vd.defined() ? vd.data_ptr<bool>() : nullptr, d.B, d.C, d.U, p, row_loss.data_ptr<acc_t>());
    };
    switch (loss) {
      case lm::kBPR: run(std::integral_constant<int, lm::kBPR>{}); break;
      case lm::kTop1: run(std::integral_constant<int, lm::kTop1>{}); break;
      case lm::kBPRMax: run(std::integral_constant<int, lm::kBPRMax>{}); break;
      case lm::kTop1Max: run(std::integral_constant<int, lm::kTop1Max>{}); break;
      default: run(std::integral_constant<int, lm::kCrossEntropy>{}); break;
    }
  });
  at::Tensor total = row_loss.sum();
  return {dtype == acc_dtype ? total : total.to(dtype), workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const at::Tensor& workspace,
    const std::optional<at::Tensor>& columns) {
  return sampled_loss_backward_common(grad_loss, hidden, weight, bias, candidates, log_q, valid,
                                      loss, activation, elu_alpha, bpreg, logq, mask_hits,
                                      workspace, columns);
}

}  // namespace

namespace cpu {

bool activate_rows_f32(float* x, int64_t rows, int64_t cols, int64_t ld, int64_t activation,
                       float alpha) {
#if GRU4REC_HAS_AVX2_BUILD
  if (!cpu_has_avx2() || (activation != lm::kTanh && activation != lm::kElu)) return false;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  cpu::parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = x + r * ld;
      int64_t j = GRU4REC_AVX512_HEAD(activate_array_avx512(row, row, cols, activation, alpha));
      j += activate_array_avx2(row + j, row + j, cols - j, activation, alpha);
      if (j < cols) {  // the last < 8: one padded vector, the same code as every other element
        float pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        std::copy(row + j, row + cols, pad);
        activate_array_avx2(pad, pad, 8, activation, alpha);
        std::copy(pad, pad + (cols - j), row + j);
      }
    }
  });
  return true;
#else
  (void)x; (void)rows; (void)cols; (void)ld; (void)activation; (void)alpha;
  return false;
#endif
}

}  // namespace cpu
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) {
  m.impl("sampled_loss_forward", &gru4rec::sampled_loss_forward_cpu);
  m.impl("sampled_loss_backward", &gru4rec::sampled_loss_backward_cpu);
}
