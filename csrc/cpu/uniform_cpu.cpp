// Uniform draws from torch's CPU generator (csrc/cpu/uniform_cpu.h). ATen's uniform_ on the CPU
// calls the generator once per element (at::mt19937, one 32-bit word per float, two per double),
// about 2 ns a number: at the retailrocket preset the step's two dropout masks took 70 us of a
// 2.6 ms step. Here the words come out of the same twister state a block at a time: the state
// update (at::mt19937_engine::next_state) and the tempering run on 8 words per AVX2 instruction,
// then each word becomes a number with ATen's own formula (at::transformation::uniform_real and
// the uniform kernel's rounding to bfloat16 / half and its clamp of 1 to 0).
#include "cpu/uniform_cpu.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <ATen/core/TransformationHelper.h>
#include <c10/util/Exception.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "cpu/cpu_isa.h"

namespace gru4rec::cpu {
namespace {

constexpr int kN = at::MERSENNE_STATE_N;  // 624 words of state
constexpr int kM = at::MERSENNE_STATE_M;  // 397

inline uint32_t twist_word(uint32_t u, uint32_t v) {
  return (((u & at::UMASK) | (v & at::LMASK)) >> 1) ^ ((v & 1u) ? at::MATRIX_A : 0u);
}

inline uint32_t temper_word(uint32_t y) {
  y ^= (y >> 11);
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= (y >> 18);
  return y;
}

// s [624]: the next block of the twister's state, in place (at::mt19937_engine::next_state).
void next_block_scalar(uint32_t* s) {
  int j = 0;
  for (; j < kN - kM; ++j) s[j] = s[j + kM] ^ twist_word(s[j], s[j + 1]);
  for (; j < kN - 1; ++j) s[j] = s[j + kM - kN] ^ twist_word(s[j], s[j + 1]);
  s[kN - 1] = s[kM - 1] ^ twist_word(s[kN - 1], s[0]);
}

// s [m] -> out [m]: the tempered words.
void temper_scalar(const uint32_t* s, uint32_t* out, int64_t m) {
  for (int64_t i = 0; i < m; ++i) out[i] = temper_word(s[i]);
}

#if GRU4REC_HAS_AVX2_BUILD
// dst[0..8) = far[i] ^ twist_word(cur[i], cur[i + 1]) for 8 lanes (loaded before the store).
GRU4REC_TARGET_AVX2 inline void twist8(uint32_t* dst, const uint32_t* cur, const uint32_t* far) {
  const __m256i upper = _mm256_set1_epi32(static_cast<int>(at::UMASK));
  const __m256i lower = _mm256_set1_epi32(static_cast<int>(at::LMASK));
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i magic = _mm256_set1_epi32(static_cast<int>(at::MATRIX_A));
  const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cur));
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cur + 1));
  const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(far));
  const __m256i y = _mm256_or_si256(_mm256_and_si256(u, upper), _mm256_and_si256(v, lower));
  const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(v, one), one);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                      _mm256_xor_si256(_mm256_xor_si256(f, _mm256_srli_epi32(y, 1)), _mm256_and_si256(odd, magic)));
}

// next_block_scalar, 8 words at a time where no lane reads a word that the same vector writes: the
// first part reads only old words (s[j+1..j+8] and s[j+397..]), the second new ones 227 back.
GRU4REC_TARGET_AVX2 void next_block_avx2(uint32_t* s) {
  int j = 0;
  for (; j + 8 <= kN - kM; j += 8) twist8(s + j, s + j, s + j + kM);
  for (; j < kN - kM; ++j) s[j] = s[j + kM] ^ twist_word(s[j], s[j + 1]);
  for (; j + 8 <= kN - 1; j += 8) twist8(s + j, s + j, s + j + kM - kN);
  for (; j < kN - 1; ++j) s[j] = s[j + kM - kN] ^ twist_word(s[j], s[j + 1]);
  s[kN - 1] = s[kM - 1] ^ twist_word(s[kN - 1], s[0]);
}

GRU4REC_TARGET_AVX2 void temper_avx2(const uint32_t* s, uint32_t* out, int64_t m) {
  const __m256i b = _mm256_set1_epi32(static_cast<int>(0x9d2c5680u));
  const __m256i c = _mm256_set1_epi32(static_cast<int>(0xefc60000u));
  int64_t i = 0;
  for (; i + 8 <= m; i += 8) {
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 11));
    y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 7), b));
    y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 15), c));
    y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 18));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), y);
  }
  temper_scalar(s + i, out + i, m - i);
}
#endif

void next_block(uint32_t* s, bool simd) {
#if GRU4REC_HAS_AVX2_BUILD
  if (simd && cpu_has_avx2()) return next_block_avx2(s);
#endif
  next_block_scalar(s);
}

void temper(const uint32_t* s, uint32_t* out, int64_t m, bool simd) {
#if GRU4REC_HAS_AVX2_BUILD
  if (simd && cpu_has_avx2()) return temper_avx2(s, out, m);
#endif
  temper_scalar(s, out, m);
}

}  // namespace

// out [n]: the next n words of engine, as n calls of its operator() give them. The engine takes
// a word from state_[next_] while --left_ stays above 0, and makes the next block when it reaches
// 0: left_ - 1 words are ready, and a new block has left_ = 625 - next_. simd false: no AVX2.
void draw_words(at::mt19937& engine, uint32_t* out, int64_t n, bool simd) {
  at::mt19937_data_pod st = engine.data();
  if (st.left_ < 1 || st.next_ + static_cast<int64_t>(st.left_) - 1 > kN) {  // not a state it makes
    for (int64_t i = 0; i < n; ++i) out[i] = engine();
    return;
  }
  int64_t done = 0;
  while (done < n) {
    int64_t ready = st.left_ - 1;
    if (ready == 0) {
      next_block(st.state_.data(), simd);
      st.left_ = kN + 1;
      st.next_ = 0;
      ready = kN;
    }
    const int64_t m = std::min(ready, n - done);
    temper(st.state_.data() + st.next_, out + done, m, simd);
    st.next_ += static_cast<uint32_t>(m);
    st.left_ -= static_cast<int>(m);
    done += m;
  }
  engine.set_data(st);
}

namespace {

// One number of at::uniform_real_distribution<opmath_t>(0, 1) from its word(s), as ATen's uniform
// kernel stores it: rounded to scalar_t, and 1 (a rounding up) stored as 0.
template <typename scalar_t>
inline scalar_t uniform_from_words(const uint32_t* w) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t x;
  if constexpr (std::is_same_v<opmath_t, double>) {
    const uint64_t v = (static_cast<uint64_t>(w[0]) << 32) | w[1];  // CPUGeneratorImpl::random64
    x = at::transformation::uniform_real<double>(v, 0.0, 1.0);
  } else {
    x = at::transformation::uniform_real<opmath_t>(w[0], opmath_t(0), opmath_t(1));
  }
  const scalar_t value = static_cast<scalar_t>(x);
  return value == static_cast<scalar_t>(1.0) ? static_cast<scalar_t>(0.0) : value;
}

// out [n] <- the next n numbers of gen's uniform_(0, 1), under gen's lock.
template <typename scalar_t>
void fill_from(at::CPUGeneratorImpl* gen, scalar_t* out, int64_t n, bool simd) {
  constexpr int64_t kWordsPer = std::is_same_v<at::opmath_type<scalar_t>, double> ? 2 : 1;
  constexpr int64_t kChunk = 1024;  // numbers per batch of words
  uint32_t words[kChunk * kWordsPer];
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::mt19937 engine = gen->engine();
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    draw_words(engine, words, len * kWordsPer, simd);
    for (int64_t j = 0; j < len; ++j) out[i + j] = uniform_from_words<scalar_t>(words + j * kWordsPer);
  }
  gen->set_engine(engine);
}

bool fill_supported(const at::Tensor& out) {
  const auto dt = out.scalar_type();
  return out.is_cpu() && out.is_contiguous() &&
         (dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf);
}

void fill_ours(at::Tensor& out, const std::optional<at::Generator>& gen, bool simd) {
  auto* g = at::get_generator_or_default<at::CPUGeneratorImpl>(gen, at::detail::getDefaultCPUGenerator());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "uniform_fill", [&] {
    fill_from<scalar_t>(g, out.data_ptr<scalar_t>(), out.numel(), simd);
  });
}

// Our draws against ATen's from two generators with one seed, in pieces that start and end inside
// a block and span several, for each dtype: true when all are equal and the states end equal.
bool matches_aten() {
  for (const auto dt : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    const at::Generator ours = at::make_generator<at::CPUGeneratorImpl>(20161117);
    const at::Generator theirs = at::make_generator<at::CPUGeneratorImpl>(20161117);
    for (const int64_t n : {1, 700, 1500, 5, 624}) {
      at::Tensor a = at::empty({n}, at::TensorOptions().dtype(dt));
      at::Tensor b = at::empty({n}, at::TensorOptions().dtype(dt));
      fill_ours(a, ours, true);
      b.uniform_(0, 1, theirs);
      if (!at::equal(a, b)) return false;
    }
    at::Tensor a = at::empty({3}, at::kFloat).uniform_(0, 1, ours);
    at::Tensor b = at::empty({3}, at::kFloat).uniform_(0, 1, theirs);
    if (!at::equal(a, b)) return false;
  }
  return true;
}

}  // namespace

bool warn_unless(bool ok, const char* message) {
  if (!ok) TORCH_WARN(message);
  return ok;
}

void uniform_fill(at::Tensor& out, const std::optional<at::Generator>& gen, bool simd) {
  static const bool same = warn_unless(matches_aten(),
                                       "gru4rec: this torch's uniform_ draws differ from the package's fast CPU "
                                       "draws (csrc/cpu/uniform_cpu.cpp); the dropout masks use torch's uniform_ "
                                       "instead");
  if (!same || !fill_supported(out)) {
    out.uniform_(0, 1, gen);
    return;
  }
  fill_ours(out, gen, simd);
}

at::Tensor rand_like_fast(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  uniform_fill(out);
  return out;
}

}  // namespace gru4rec::cpu
