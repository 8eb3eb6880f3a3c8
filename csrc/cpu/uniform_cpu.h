// Uniform draws from torch's CPU generator, the same numbers bit for bit as out.uniform_(0, 1),
// with the Mersenne twister's state update and tempering run 8 words at a time (AVX2); see
// csrc/cpu/uniform_cpu.cpp.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/MT19937RNGEngine.h>

#include <cstdint>

#include <optional>

namespace gru4rec::cpu {

// out (contiguous CPU float32, float64 or bfloat16; anything else goes to out.uniform_) filled
// with the draws out.uniform_(0, 1, gen) would give, and gen (default: torch's default CPU
// generator) left in the same state. Checked once per process against ATen's own uniform_; if
// they ever differ (another torch), this warns once and calls uniform_ from then on. simd false:
// the scalar code that CPUs without AVX2 run (for tests).
void uniform_fill(at::Tensor& out, const std::optional<at::Generator>& gen = std::nullopt, bool simd = true);

// uniform_fill into a new tensor like x (x's sizes, dtype and device; contiguous).
at::Tensor rand_like_fast(const at::Tensor& x);

// ok, after a warning with `message` when it is false: for the once-per-process checks of the
// fast draws against ATen (`static const bool same = warn_unless(matches_aten(), "...")`).
bool warn_unless(bool ok, const char* message);

// out [n]: the next n 32-bit words of engine, as n calls of its operator() give them (block state
// updates and tempering 8 words at a time; simd false: the scalar code).
void draw_words(at::mt19937& engine, uint32_t* out, int64_t n, bool simd = true);

}  // namespace gru4rec::cpu
