// CPU kernel of gru4rec::alias_sample_ (csrc/alias_sample.cpp). The words come from the generator's
// twister a block at a time (csrc/cpu/uniform_cpu.h): first S words for the items (word % N, as
// ATen's randint takes them for N < 2^28), then S for the uniforms (24 bits, as rand), then one
// pass of alias lookups. Checked once per process against the ATen sequence; if they ever differ
// (another torch), this warns once and runs that sequence from then on.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>

#include "cpu/uniform_cpu.h"

namespace gru4rec {
void check_alias_sample_args(const at::Tensor& out, const at::Tensor& prob, const at::Tensor& alias);

namespace {

// The sequence the sampler ran before this kernel (the reference for the check, and the fallback).
void alias_sample_aten(at::Tensor& out, const at::Tensor& prob, const at::Tensor& alias,
                       const std::optional<at::Generator>& gen) {
  const int64_t S = out.size(0), N = prob.size(0);
  const at::Tensor idx = at::randint(N, {S}, gen, out.options());
  const at::Tensor u = at::rand({S}, gen, prob.options());
  out.copy_(at::where(u < prob.index_select(0, idx), idx, alias.index_select(0, idx)));
}

// out [S] <- the alias draws from the words of gen's engine (under its lock).
void alias_sample_words(int64_t* out, int64_t S, const float* prob, const int64_t* alias, int64_t N,
                        at::CPUGeneratorImpl* gen) {
  constexpr int64_t kChunk = 2048;
  uint32_t words[kChunk];
  // word % N with one 64-bit multiply per word instead of a divide (Lemire's fastmod: exact for
  // every 32-bit word and divisor).
  const uint32_t range = static_cast<uint32_t>(N);
  const uint64_t magic = UINT64_C(0xFFFFFFFFFFFFFFFF) / range + 1;
  const auto mod_n = [magic, range](uint32_t w) {
    return static_cast<uint32_t>((static_cast<__uint128_t>(magic * w) * range) >> 64);
  };
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::mt19937 engine = gen->engine();
  for (int64_t i = 0; i < S; i += kChunk) {  // the items: S words first, as randint draws them
    const int64_t len = std::min(kChunk, S - i);
    cpu::draw_words(engine, words, len);
    for (int64_t j = 0; j < len; ++j) out[i + j] = static_cast<int64_t>(mod_n(words[j]));
  }
  for (int64_t i = 0; i < S; i += kChunk) {  // then the uniforms: (word & (2^24 - 1)) * 2^-24
    const int64_t len = std::min(kChunk, S - i);
    cpu::draw_words(engine, words, len);
    for (int64_t j = 0; j < len; ++j) {
      const float u = static_cast<float>(words[j] & 0xFFFFFFu) * (1.0f / 16777216.0f);
      const int64_t item = out[i + j], other = alias[item];
      const int64_t keep = -static_cast<int64_t>(u < prob[item]);  // all ones or 0: no branch to mispredict
      out[i + j] = (item & keep) | (other & ~keep);
    }
  }
  gen->set_engine(engine);
}

void alias_sample_ours(at::Tensor& out, const at::Tensor& prob, const at::Tensor& alias,
                       const std::optional<at::Generator>& gen) {
  auto* g = at::get_generator_or_default<at::CPUGeneratorImpl>(gen, at::detail::getDefaultCPUGenerator());
  const at::Tensor p = prob.contiguous(), a = alias.contiguous();
  alias_sample_words(out.data_ptr<int64_t>(), out.size(0), p.const_data_ptr<float>(), a.const_data_ptr<int64_t>(),
                     p.size(0), g);
}

// Ours against ATen's from two generators with one seed, over block boundaries: equal draws and
// equal states after.
bool matches_aten() {
  const at::Generator ours = at::make_generator<at::CPUGeneratorImpl>(20181022);
  const at::Generator theirs = at::make_generator<at::CPUGeneratorImpl>(20181022);
  const int64_t N = 1000;
  const at::Tensor prob = at::rand({N}, ours).to(at::kFloat);
  (void)at::rand({N}, theirs);
  const at::Tensor alias = at::randint(N, {N}, ours, at::TensorOptions().dtype(at::kLong));
  (void)at::randint(N, {N}, theirs, at::TensorOptions().dtype(at::kLong));
  for (const int64_t S : {700, 1, 3000}) {
    at::Tensor a = at::empty({S}, at::kLong), b = at::empty({S}, at::kLong);
    alias_sample_ours(a, prob, alias, ours);
    alias_sample_aten(b, prob, alias, theirs);
    if (!at::equal(a, b)) return false;
  }
  return at::equal(at::rand({3}, ours), at::rand({3}, theirs));
}

void alias_sample_cpu(at::Tensor& out, const at::Tensor& prob, const at::Tensor& alias,
                      const std::optional<at::Generator>& gen) {
  check_alias_sample_args(out, prob, alias);
  static const bool same = cpu::warn_unless(matches_aten(),
                                            "gru4rec: this torch's randint/rand draws differ from the package's "
                                            "alias sampler (csrc/cpu/alias_sample_cpu.cpp); sampling runs torch's "
                                            "ops instead");
  // ATen's randint takes 64-bit words from N = 2^28 on: that range stays with ATen.
  if (!same || prob.size(0) >= (int64_t(1) << 28)) {
    alias_sample_aten(out, prob, alias, gen);
    return;
  }
  alias_sample_ours(out, prob, alias, gen);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("alias_sample_", &gru4rec::alias_sample_cpu); }
