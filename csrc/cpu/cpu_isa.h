// Run-time choice between the baseline x86-64 code and an AVX2+FMA build of the same loops.
// A callable passed to run_avx2 is always inlined into it (GRU4REC_ROWS_INLINE), so its loops are
// compiled once per ISA; cpu_has_avx2() says which one this CPU can run.
#pragma once
#include <cstdint>

namespace gru4rec {

#if defined(__x86_64__) && defined(__GNUC__)
#define GRU4REC_HAS_AVX2_BUILD 1
#define GRU4REC_ROWS_INLINE __attribute__((always_inline))
#define GRU4REC_TARGET_AVX2 __attribute__((target("avx2,fma")))
template <class F>
GRU4REC_TARGET_AVX2 void run_avx2(const F& f, int64_t b0, int64_t b1) {
  f(b0, b1);
}
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
// 16-lane twins of AVX2 loops: the AVX2+FMA target plus AVX-512F, so that the compiler treats
// their multiplies and adds as it treats the AVX2 build's (the same results bit for bit).
#define GRU4REC_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f")))
inline bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return has;
}
#else
#define GRU4REC_HAS_AVX2_BUILD 0
#define GRU4REC_ROWS_INLINE
#define GRU4REC_TARGET_AVX2
template <class F>
void run_avx2(const F& f, int64_t b0, int64_t b1) { f(b0, b1); }
inline bool cpu_has_avx2() { return false; }
#define GRU4REC_TARGET_AVX512
inline bool cpu_has_avx512() { return false; }
#endif

template <class F>
void run_baseline(const F& f, int64_t b0, int64_t b1) { f(b0, b1); }

// f(b0, b1) on [b0, b1), in the AVX2+FMA build when the CPU has it.
template <class F>
void run_best(const F& f, int64_t b0, int64_t b1) {
  if (cpu_has_avx2()) {
    run_avx2(f, b0, b1);
  } else {
    run_baseline(f, b0, b1);
  }
}

}  // namespace gru4rec
