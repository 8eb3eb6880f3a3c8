// Loss math shared by the CPU and CUDA kernels of gru4rec::sampled_loss_forward/backward
// (SPEC section 4): the loss and activation codes, numerically stable sigmoid / log-sigmoid,
// the final activations and their derivatives. Every function works on the accumulation type
// (float or double), so bfloat16 inputs are converted before they get here.
//
// The host-only part at the end declares the argument checks and the device-independent steps
// (gather + score GEMM, backward GEMMs) that csrc/sampled_loss.cpp defines for both backends.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LOSS_HD __host__ __device__ __forceinline__
#else
#define LOSS_HD inline
#endif

namespace gru4rec {
namespace loss_math {

// Codes of the `loss` argument of the ops (the Python wrapper maps the names).
enum LossCode : int64_t { kBPR = 0, kTop1 = 1, kBPRMax = 2, kTop1Max = 3, kCrossEntropy = 4 };
// Codes of the `activation` argument: the final activation applied to every score.
enum ActivationCode : int64_t { kLinear = 0, kTanh = 1, kElu = 2 };

// The scalar parameters of one call, as the row kernels see them.
template <typename acc_t>
struct LossParams {
  int64_t loss;        // LossCode
  int64_t activation;  // ActivationCode
  acc_t elu_alpha;     // alpha of elu
  acc_t bpreg;         // weight of BPR-max's score regularisation
  acc_t logq;          // weight of the cross-entropy popularity correction (0: none)
  bool mask_hits;      // a column j != b with row b's target id is not a negative of row b
  acc_t scale;         // 1 / B: the batch loss is the sum over valid rows divided by B
};

// The BPR-max constant: -log(sum_j s_j sigmoid(r_i - r_j) + 1e-24), kept in log form.
template <typename acc_t>
LOSS_HD acc_t log_bprmax_eps() {
  return acc_t(-55.262042231857095);  // log(1e-24)
}

template <typename acc_t>
LOSS_HD acc_t max_of(acc_t a, acc_t b) {
  return a > b ? a : b;
}

// sigmoid(x) without overflow for any finite x.
template <typename acc_t>
LOSS_HD acc_t sigmoid(acc_t x) {
  const acc_t e = std::exp(-std::abs(x));  // in (0, 1]
  const acc_t s = acc_t(1) / (acc_t(1) + e);
  return x >= acc_t(0) ? s : e * s;
}

// log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)): finite for any finite x.
template <typename acc_t>
LOSS_HD acc_t log_sigmoid(acc_t x) {
  const acc_t lo = x < acc_t(0) ? x : acc_t(0);
  return lo - std::log1p(std::exp(-std::abs(x)));
}

// sigmoid'(x) = sigmoid(x) sigmoid(-x) = e / (1 + e)^2 with e = exp(-|x|): no cancellation.
template <typename acc_t>
LOSS_HD acc_t sigmoid_grad(acc_t x) {
  const acc_t e = std::exp(-std::abs(x));
  const acc_t d = acc_t(1) + e;
  return e / (d * d);
}

// sigmoid(x) and sigmoid'(x) from one exp.
template <typename acc_t>
LOSS_HD void sigmoid_and_grad(acc_t x, acc_t& sig, acc_t& grad) {
  const acc_t e = std::exp(-std::abs(x));
  const acc_t d = acc_t(1) + e;
  const acc_t inv = acc_t(1) / d;
  sig = x >= acc_t(0) ? inv : e * inv;
  grad = e * inv * inv;
}

// sigmoid(x), sigmoid(-x) and log(sigmoid(x)) from one exp (no 1 - sigmoid cancellation).
template <typename acc_t>
LOSS_HD void sigmoid_and_log(acc_t x, acc_t& sig, acc_t& sig_neg, acc_t& log_sig) {
  const acc_t e = std::exp(-std::abs(x));
  const acc_t inv = acc_t(1) / (acc_t(1) + e);
  sig = x >= acc_t(0) ? inv : e * inv;
  sig_neg = x >= acc_t(0) ? e * inv : inv;
  log_sig = (x < acc_t(0) ? x : acc_t(0)) - std::log1p(e);
}

// log(exp(a) + exp(b)) for finite a, b.
template <typename acc_t>
LOSS_HD acc_t log_add_exp(acc_t a, acc_t b) {
  const acc_t m = max_of(a, b);
  return m + std::log1p(std::exp(-std::abs(a - b)));
}

// The final activation of a score x.
template <typename acc_t>
LOSS_HD acc_t activate(acc_t x, int64_t activation, acc_t alpha) {
  if (activation == kTanh) return std::tanh(x);
  if (activation == kElu) return x > acc_t(0) ? x : alpha * std::expm1(x);
  return x;
}

// d act(x) / dx, given x and r = act(x) (tanh: 1 - r^2; elu: alpha exp(x) for x <= 0).
template <typename acc_t>
LOSS_HD acc_t activate_grad(acc_t x, acc_t r, int64_t activation, acc_t alpha) {
  if (activation == kTanh) return acc_t(1) - r * r;
  if (activation == kElu) return x > acc_t(0) ? acc_t(1) : alpha * std::exp(x);
  return acc_t(1);
}

}  // namespace loss_math
}  // namespace gru4rec

// Host-side declarations (defined in csrc/sampled_loss.cpp), for the CPU and CUDA kernel files.
#include <ATen/core/Tensor.h>
#include <optional>

namespace gru4rec {

// Sizes of one call: B rows, C = B + K loss columns (targets then samples), U gathered item rows
// (U = C without `columns`), H hidden units, N items.
struct SampledLossDims {
  int64_t B, C, U, H, N;
};

// Checks every argument of the forward op (shapes, dtypes, devices, codes, and with check_ids the
// id range, on the CPU only: on CUDA it would need a host sync) and returns the sizes; errors
// name the argument.
SampledLossDims check_sampled_loss_args(const at::Tensor& hidden, const at::Tensor& weight,
                                        const at::Tensor& bias, const at::Tensor& candidates,
                                        const std::optional<at::Tensor>& log_q,
                                        const std::optional<at::Tensor>& valid, int64_t loss,
                                        int64_t activation, double logq,
                                        const std::optional<at::Tensor>& columns, bool check_ids);

// The device-independent first step of the forward: a fresh workspace (flat, hidden's dtype,
// B*U + U*H) whose first B*U entries hold the raw scores S = hidden @ W[c]^T + b[c] as [B,U] and
// whose last U*H entries hold the gathered rows W[c] as [U,H]. The row pass then overwrites S in
// place with dL/dS (summed over the columns that share a gathered row). add_bias false: S without
// b[c] (the CUDA row kernel adds it, which saves the bias gather's launch).
at::Tensor sampled_loss_scores(const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& candidates,
                               const SampledLossDims& dims, bool add_bias = true);

// The [B,U] view of dL/dS and the [U,H] view of the gathered rows inside a workspace.
at::Tensor workspace_grad_scores(const at::Tensor& workspace, const SampledLossDims& dims);
at::Tensor workspace_rows(const at::Tensor& workspace, const SampledLossDims& dims);

// The backward's two products and column sum from dL/dS [B,U] (already times grad_loss) and the
// workspace's gathered rows: writes dL/dW[c] into grad_weight_rows [U,H] (any view BLAS takes, such
// as the first U rows of a larger buffer) and returns (grad_hidden [B,H], grad_bias_rows [U]).
std::tuple<at::Tensor, at::Tensor> sampled_loss_grads_into(at::Tensor& grad_weight_rows, const at::Tensor& grad_scores,
                                                           const at::Tensor& workspace, const at::Tensor& hidden,
                                                           const SampledLossDims& dims);

// The whole backward op (two GEMMs and a column sum, through ATen: BLAS / cuBLAS): the same code
// serves both backends once the forward has left dL/dS in the workspace.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_loss_backward_common(
    const at::Tensor& grad_loss, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const at::Tensor& workspace,
    const std::optional<at::Tensor>& columns);

}  // namespace gru4rec
