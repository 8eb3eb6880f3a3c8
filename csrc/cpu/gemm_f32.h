// Our float32 matrix product for AVX-512 CPUs on which the BLAS that torch ships runs slower code
// (MKL takes its AVX2 kernels on AMD CPUs: about half of what the cores can do). Used by
// csrc/cpu/products_cpu.cpp for each single-threaded piece of a product.
#pragma once

#include <cstdint>

namespace gru4rec {
namespace cpu {

// Whether gemm_f32 runs on this CPU and is chosen: AVX-512F present, the CPU not an Intel one
// (where MKL runs its own AVX-512 kernels), and GRU4REC_GEMM not "blas" ("own": any AVX-512F
// CPU). Decided on first use.
bool use_own_gemm();

// Overrides that choice for this process (benchmarks comparing the two side by side, tests);
// throws std::invalid_argument for `own` on a CPU without AVX-512F. Whether this CPU (and this
// build) can run gemm_f32 at all is cpu_has_avx512() (cpu/cpu_isa.h).
void set_own_gemm(bool own);

// out[M,N] = init + a @ b, where init is out itself (accumulate), bias[N] on every row (bias not
// null) or zero. a(m,k) = a[m*sam + k*sak] and b(k,n) = b[k*sbk + n*sbn], each with one unit
// stride (sak == 1 or sam == 1; sbn == 1 or sbk == 1); out has unit column stride, row stride ldo.
// Every element is one chain of fused multiply-adds over k = 0..K-1 starting from init, so the
// result does not depend on how a caller splits the product into pieces.
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t sam, int64_t sak,
              const float* b, int64_t sbk, int64_t sbn, float* out, int64_t ldo, const float* bias,
              bool accumulate);

}  // namespace cpu
}  // namespace gru4rec
