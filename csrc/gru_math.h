// Gate math of the two GRU cells (SPEC section 3), shared by the CPU and CUDA kernels.
//
// Every function works on one hidden unit of one row. "a_*" are gate pre-activations with both
// biases already added; "hp" is the previous hidden state after the reset (0 for reset rows).
// The host float versions of sigmoid/tanh use a polynomial exp that the compiler can vectorise
// (std::exp is a library call that blocks vectorisation); their error is a few float ulp.
// The host emulation of the CUDA kernels (GRU4REC_CUDA_EMU) uses the device formulas.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define GRU4REC_HOST_DEVICE __host__ __device__
#else
#define GRU4REC_HOST_DEVICE
#endif

namespace gru4rec {

// For float x <= 0 (callers pass -|.|): x = n ln2 + r, scale = 2^n and em1_r = e^r - 1 by a
// Cephes-style polynomial. Branch-free (selects only) so that loops calling it vectorise.
inline void host_exp_parts(float x, float& scale, float& em1_r) {
  x = x < -87.0f ? -87.0f : x;  // exp(-87) ~ 1.6e-38, still a normal float
  const float fx = x * 1.44269504088896341f;
  const int32_t n = static_cast<int32_t>(fx - 0.5f);  // fx <= 0: truncation rounds to nearest
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  em1_r = p * r2 + r;
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  std::memcpy(&scale, &bits, sizeof(float));
}

// exp(x) for float x <= 0, a few ulp of relative error.
inline float host_exp_nonpos(float x) {
  float scale, em1_r;
  host_exp_parts(x, scale, em1_r);
  return scale * (em1_r + 1.0f);
}

// exp(x) - 1 for float x <= 0 as 2^n (e^r - 1) + (2^n - 1): full relative accuracy near 0 too.
inline float host_expm1_nonpos(float x) {
  float scale, em1_r;
  host_exp_parts(x, scale, em1_r);
  return scale * em1_r + (scale - 1.0f);
}

// sigmoid(x) for float from e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below.
inline float host_sigmoidf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float e = host_exp_nonpos(-ax);
  const float s = 1.0f / (1.0f + e);
  return x < 0.0f ? e * s : s;
}

// tanh(x) for float: with m = exp(-2|x|) - 1, tanh(|x|) = -m / (2 + m), accurate near 0 too.
inline float host_tanhf(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float m = host_expm1_nonpos(-2.0f * ax);
  const float y = -m / (2.0f + m);
  return x < 0.0f ? -y : y;
}

GRU4REC_HOST_DEVICE inline float sigmoid(float x) {
#if defined(__CUDA_ARCH__) || defined(GRU4REC_CUDA_EMU)
  return 1.0f / (1.0f + expf(-x));
#else
  return host_sigmoidf(x);
#endif
}

GRU4REC_HOST_DEVICE inline double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

GRU4REC_HOST_DEVICE inline float tanh_(float x) {
#if defined(__CUDA_ARCH__) || defined(GRU4REC_CUDA_EMU)
  return tanhf(x);
#else
  return host_tanhf(x);
#endif
}

GRU4REC_HOST_DEVICE inline double tanh_(double x) { return ::tanh(x); }

// ---- cudnn cell: n = tanh(a_n + r * hn), hn = W_hn h + b_hn; h' = (1 - z) n + z h ----

// Forward of one unit: a_r, a_z, a_n (input part of n with b_in), hn -> r, z, n, h'.
template <typename T>
GRU4REC_HOST_DEVICE inline void cudnn_forward(T a_r, T a_z, T a_n, T hn, T hp, T& r, T& z, T& n,
                                              T& h) {
  r = sigmoid(a_r);
  z = sigmoid(a_z);
  n = tanh_(a_n + r * hn);
  h = n + z * (hp - n);
}

// Backward of one unit: dh (dL/dh') -> pre-activation grads da_r, da_z, da_n (input side of n),
// dhn (recurrent side of n, W_hn h + b_hn) and the direct part of dL/dh (through z * h).
template <typename T>
GRU4REC_HOST_DEVICE inline void cudnn_backward(T dh, T r, T z, T n, T hn, T hp, T& da_r, T& da_z,
                                               T& da_n, T& dhn, T& dh_direct) {
  const T one = T(1);
  da_n = dh * (one - z) * (one - n * n);
  da_z = dh * (hp - n) * z * (one - z);
  da_r = da_n * hn * r * (one - r);
  dhn = da_n * r;
  dh_direct = dh * z;
}

// ---- gru4rec cell: c = tanh(a_c + U_c (r * h)); h' = (1 - z) h + z c ----

// Gates of one unit: a_r, a_z -> r, z and r * h (the input of the candidate's recurrent product).
template <typename T>
GRU4REC_HOST_DEVICE inline void gru4rec_gates(T a_r, T a_z, T hp, T& r, T& z, T& rh) {
  r = sigmoid(a_r);
  z = sigmoid(a_z);
  rh = r * hp;
}

// Candidate and new state of one unit: a_c (all of c's pre-activation), z, hp -> c, h'.
template <typename T>
GRU4REC_HOST_DEVICE inline void gru4rec_candidate(T a_c, T z, T hp, T& c, T& h) {
  c = tanh_(a_c);
  h = hp + z * (c - hp);
}

// Backward, part 1: dh -> da_z, da_c and the direct part of dL/dh (through (1 - z) h).
template <typename T>
GRU4REC_HOST_DEVICE inline void gru4rec_backward_cand(T dh, T z, T c, T hp, T& da_z, T& da_c,
                                                      T& dh_direct) {
  const T one = T(1);
  da_c = dh * z * (one - c * c);
  da_z = dh * (c - hp) * z * (one - z);
  dh_direct = dh * (one - z);
}

// Backward, part 2: drh = dL/d(r * h) (from U_c^T da_c) -> da_r and dL/dh through r * h.
template <typename T>
GRU4REC_HOST_DEVICE inline void gru4rec_backward_gates(T drh, T r, T hp, T& da_r, T& dh_rh) {
  da_r = drh * hp * r * (T(1) - r);
  dh_rh = drh * r;
}

}  // namespace gru4rec
