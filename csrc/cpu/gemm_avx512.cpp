// gemm_f32 (csrc/cpu/gemm_f32.h): a register-blocked AVX-512 float32 product. out is cut into
// panels of 48 columns; a panel of b is read in place when its rows are contiguous, else packed
// (transposed 16x16 at a time) into a [K, 48] buffer; each 8-row tile of the panel is one micro
// kernel call holding its 8x48 sums in 24 zmm registers for the whole of k.
#include "cpu/gemm_f32.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <stdexcept>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GRU4REC_GEMM_AVX512 1
// GCC 12 warns that the masked-load intrinsics read an uninitialised __Y (their own undefined
// pass-through operand); it is a false positive of the intrinsics header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#else
#define GRU4REC_GEMM_AVX512 0
#endif

namespace gru4rec {
namespace cpu {

#if GRU4REC_GEMM_AVX512

namespace {

constexpr int kMR = 8;            // rows of a micro tile
constexpr int kNV = 3;            // 16-float vectors per micro tile row
constexpr int kNR = 16 * kNV;     // columns of a panel

enum class Init { kZero, kOut, kBias };

// Micro tile: out[MR, <=16*NV] = init + a[MR, K] @ panel[K, <=16*NV]. a(i,k) is a[i*sam + k]
// (kARows) or a[k*sak + i]; panel row k starts at b + k*ldb; `tail` masks the last vector's
// columns; bias [<=16*NV] is read for Init::kBias.
template <int MR, int NV, bool kARows>
GRU4REC_TARGET_AVX512 void micro_tile(int64_t K, const float* a, int64_t sam, int64_t sak,
                                      const float* b, int64_t ldb, __mmask16 tail, float* out,
                                      int64_t ldo, Init init, const float* bias) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      const __mmask16 m = v == NV - 1 ? tail : __mmask16(0xFFFF);
      if (init == Init::kZero) {
        acc[i][v] = _mm512_setzero_ps();
      } else if (init == Init::kBias) {
        acc[i][v] = _mm512_maskz_loadu_ps(m, bias + 16 * v);
      } else {
        acc[i][v] = _mm512_maskz_loadu_ps(m, out + i * ldo + 16 * v);
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(tail, bk + 16 * v) : _mm512_loadu_ps(bk + 16 * v);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(kARows ? a[i * sam + k] : a[k * sak + i]);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      if (v == NV - 1) {
        _mm512_mask_storeu_ps(out + i * ldo + 16 * v, tail, acc[i][v]);
      } else {
        _mm512_storeu_ps(out + i * ldo + 16 * v, acc[i][v]);
      }
    }
  }
}

using MicroTile = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t,
                           __mmask16, float*, int64_t, Init, const float*);

// kTiles[a_rows][MR-1][NV-1]: every edge size has its own fully unrolled kernel.
template <bool kARows, int... I>
constexpr std::array<MicroTile, sizeof...(I)> tiles_for(std::integer_sequence<int, I...>) {
  return {&micro_tile<I / kNV + 1, I % kNV + 1, kARows>...};
}
constexpr auto kTilesCols = tiles_for<false>(std::make_integer_sequence<int, kMR * kNV>());
constexpr auto kTilesRows = tiles_for<true>(std::make_integer_sequence<int, kMR * kNV>());

// In-register transpose of 16 rows of 16 floats: r[c] becomes column c.
GRU4REC_TARGET_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));      // column 4L of lane L
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));  // column 4L+1
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));  // column 4L+2
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));  // column 4L+3
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);
    const __m512 w0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
    const __m512 v1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}

// Packs the panel of b whose column n (n < width) is src[n*ld + k] (k < K, unit stride) into
// panel[k*kNR + n], for the `nv` 16-column blocks the micro tile reads (columns past width: 0).
GRU4REC_TARGET_AVX512 void pack_transposed(int64_t K, const float* src, int64_t ld, int64_t width,
                                           int nv, float* panel) {
  __m512 r[16];
  for (int blk = 0; blk < nv; ++blk) {
    const int64_t n0 = 16 * blk;
    const int64_t rows = std::min<int64_t>(16, width - n0);
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
      const int64_t kw = std::min<int64_t>(16, K - k0);
      const __mmask16 km = kw == 16 ? __mmask16(0xFFFF) : __mmask16((1u << kw) - 1);
      for (int64_t c = 0; c < 16; ++c) {
        r[c] = c < rows ? _mm512_maskz_loadu_ps(km, src + (n0 + c) * ld + k0) : _mm512_setzero_ps();
      }
      transpose16(r);
      for (int64_t c = 0; c < kw; ++c) _mm512_storeu_ps(panel + (k0 + c) * kNR + n0, r[c]);
    }
  }
}

bool decide_own_gemm() {
  const char* env = std::getenv("GRU4REC_GEMM");
  if (env != nullptr && std::strcmp(env, "blas") == 0) return false;
  if (!cpu_has_avx512()) return false;
  if (env != nullptr && std::strcmp(env, "own") == 0) return true;
  return !__builtin_cpu_is("intel");
}

}  // namespace

namespace {
std::atomic<int> own_gemm_choice{-1};  // -1: not decided yet; 0: BLAS; 1: gemm_f32
}  // namespace

bool use_own_gemm() {
  int choice = own_gemm_choice.load(std::memory_order_relaxed);
  if (choice < 0) {
    int undecided = -1;
    own_gemm_choice.compare_exchange_strong(undecided, decide_own_gemm() ? 1 : 0);
    choice = own_gemm_choice.load(std::memory_order_relaxed);
  }
  return choice == 1;
}

void set_own_gemm(bool own) {
  if (own && !cpu_has_avx512()) throw std::invalid_argument("this CPU has no AVX-512F");
  own_gemm_choice.store(own ? 1 : 0, std::memory_order_relaxed);
}

void gemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t sam, int64_t sak,
              const float* b, int64_t sbk, int64_t sbn, float* out, int64_t ldo, const float* bias,
              bool accumulate) {
  const bool a_rows = sak == 1;
  const bool b_in_place = sbn == 1;
  const Init init = accumulate ? Init::kOut : (bias != nullptr ? Init::kBias : Init::kZero);
  const auto& tiles = a_rows ? kTilesRows : kTilesCols;
  thread_local std::vector<float> panel_buffer;
  if (!b_in_place && panel_buffer.size() < static_cast<size_t>(K * kNR)) {
    panel_buffer.resize(static_cast<size_t>(K * kNR));
  }
  for (int64_t j0 = 0; j0 < N; j0 += kNR) {
    const int64_t width = std::min<int64_t>(kNR, N - j0);
    const int nv = static_cast<int>((width + 15) / 16);
    const int64_t last = width - 16 * (nv - 1);
    const __mmask16 tail = last == 16 ? __mmask16(0xFFFF) : __mmask16((1u << last) - 1);
    const float* panel = b + j0 * sbn;
    int64_t ldb = sbk;
    if (!b_in_place) {
      pack_transposed(K, b + j0 * sbn, sbn, width, nv, panel_buffer.data());
      panel = panel_buffer.data();
      ldb = kNR;
    }
    const float* bias_j = bias != nullptr ? bias + j0 : nullptr;
    for (int64_t i0 = 0; i0 < M; i0 += kMR) {
      const int mr = static_cast<int>(std::min<int64_t>(kMR, M - i0));
      tiles[(mr - 1) * kNV + (nv - 1)](K, a + i0 * sam, sam, sak, panel, ldb, tail,
                                       out + i0 * ldo + j0, ldo, init, bias_j);
    }
  }
}

#else  // not x86-64 with GCC/Clang: never chosen

bool use_own_gemm() { return false; }
void set_own_gemm(bool own) {
  if (own) throw std::invalid_argument("this build has no AVX-512 matrix product");
}

void gemm_f32(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t,
              int64_t, float*, int64_t, const float*, bool) {
  std::abort();  // use_own_gemm() is false: products_cpu.cpp never calls it
}

#endif

}  // namespace cpu
}  // namespace gru4rec
