// CPU kernels of gru4rec::sampled_loss_forward/backward: the score GEMM and the backward GEMMs go
// through ATen (BLAS); the fused per-row pass (activation, loss terms, reductions, dL/dscore) is
// here, parallel over rows with at::parallel_for, float and double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "loss_math.h"

namespace gru4rec {
namespace {

namespace lm = loss_math;

// Per-row scratch: activated scores r, and up to three per-column terms of the loss.
template <typename acc_t>
struct RowScratch {
  explicit RowScratch(int64_t C) : buf(4 * C), r(buf.data()), a(r + C), b(a + C), c(b + C) {}
  std::vector<acc_t> buf;
  acc_t *r, *a, *b, *c;
};

// One row's loss (unscaled) and dL/dr_j (unscaled) written to g[0..C), for the loss codes.
// r: [C] activated scores; neg: [C] 1 for the row's negatives, 0 otherwise; pos: the row index.
// Returns false when the row has no negatives and the loss needs them (the row then counts 0).
template <typename acc_t>
bool row_loss_grad(const acc_t* r, const uint8_t* neg, int64_t C, int64_t pos, acc_t ns,
                   const acc_t* shift, const lm::LossParams<acc_t>& p, RowScratch<acc_t>& s,
                   acc_t* g, acc_t& loss_out) {
  const acc_t ri = r[pos];
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  if (p.loss == lm::kCrossEntropy) {
    // z_j = r_j - logq log q_j over the positive and the negatives; L = lse(z) - z_i.
    acc_t* z = s.a;
    acc_t m = ninf;
    for (int64_t j = 0; j < C; ++j) {
      z[j] = shift ? r[j] - shift[j] : r[j];
      if (neg[j] || j == pos) m = lm::max_of(m, z[j]);
    }
    acc_t Z = 0;
    for (int64_t j = 0; j < C; ++j) {
      const acc_t e = (neg[j] || j == pos) ? std::exp(z[j] - m) : acc_t(0);
      g[j] = e;
      Z += e;
    }
    const acc_t inv = acc_t(1) / Z;
    for (int64_t j = 0; j < C; ++j) g[j] *= inv;
    g[pos] -= acc_t(1);
    loss_out = m + std::log(Z) - z[pos];
    return true;
  }
  if (ns <= acc_t(0)) return false;
  if (p.loss == lm::kBPR || p.loss == lm::kTop1) {
    // BPR: -(1/N_s) sum_j log sigmoid(r_i - r_j); TOP1: (1/N_s) sum_j sigmoid(r_j - r_i) + sigmoid(r_j^2).
    const acc_t inv = acc_t(1) / ns;
    acc_t total = 0, gpos = 0;
    const bool bpr = p.loss == lm::kBPR;
    for (int64_t j = 0; j < C; ++j) {
      acc_t term = 0, gj = 0, gi = 0;
      if (neg[j]) {
        const acc_t d = r[j] - ri;
        if (bpr) {
          term = -lm::log_sigmoid(-d);
          gj = lm::sigmoid(d);
          gi = gj;
        } else {
          const acc_t sq = r[j] * r[j];
          term = lm::sigmoid(d) + lm::sigmoid(sq);
          gi = lm::sigmoid_grad(d);
          gj = gi + acc_t(2) * r[j] * lm::sigmoid_grad(sq);
        }
      }
      total += term;
      gpos += gi;
      g[j] = gj * inv;
    }
    g[pos] = -gpos * inv;
    loss_out = total * inv;
    return true;
  }
  // Softmax over the negatives: s_j = exp(r_j - m) / Z.
  acc_t m = ninf;
  for (int64_t j = 0; j < C; ++j)
    if (neg[j]) m = lm::max_of(m, r[j]);
  acc_t* e = s.a;
  acc_t Z = 0;
  for (int64_t j = 0; j < C; ++j) {
    e[j] = neg[j] ? std::exp(r[j] - m) : acc_t(0);
    Z += e[j];
  }
  const acc_t invZ = acc_t(1) / Z;
  if (p.loss == lm::kTop1Max) {
    // L = sum_j s_j g_j, g_j = sigmoid(r_j - r_i) + sigmoid(r_j^2);
    // dL/dr_k = s_k (g_k - L + sigmoid'(r_k - r_i) + 2 r_k sigmoid'(r_k^2)), dL/dr_i = -sum s_j sigmoid'(r_j - r_i).
    acc_t* gt = s.b;
    acc_t* ht = s.c;
    acc_t G = 0, D = 0;
    for (int64_t j = 0; j < C; ++j) {
      const acc_t d = r[j] - ri, sq = r[j] * r[j];
      const acc_t sd = lm::sigmoid_grad(d);
      gt[j] = lm::sigmoid(d) + lm::sigmoid(sq);
      ht[j] = sd + acc_t(2) * r[j] * lm::sigmoid_grad(sq);
      G += e[j] * gt[j];
      D += e[j] * sd;
    }
    G *= invZ;
    for (int64_t j = 0; j < C; ++j) g[j] = e[j] * invZ * (gt[j] - G + ht[j]);
    g[pos] = -D * invZ;
    loss_out = G;
    return true;
  }
  // BPR-max: A = -log(sum_j s_j sigmoid(r_i - r_j) + 1e-24) in log form: with
  // v_j = r_j + log sigmoid(r_i - r_j), log sum_j s_j sigmoid(.) = lse(v) - lse_neg(r).
  // dA/dr_k = -rho (w_k sigmoid(r_i - r_k) - s_k), dA/dr_i = -rho sum_j w_j sigmoid(r_j - r_i),
  // w = softmax(v), rho = P / (P + 1e-24). Regulariser bpreg sum_j s_j r_j^2 =: bpreg R,
  // dR/dr_k = s_k (2 r_k + r_k^2 - R).
  acc_t* v = s.b;
  acc_t* sp = s.c;  // sigmoid(r_i - r_j)
  acc_t mv = ninf, Q = 0;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t d = ri - r[j];
    v[j] = r[j] + lm::log_sigmoid(d);
    sp[j] = lm::sigmoid(d);
    Q += e[j] * r[j] * r[j];
    if (neg[j]) mv = lm::max_of(mv, v[j]);
  }
  acc_t sv = 0, tv = 0;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t w = neg[j] ? std::exp(v[j] - mv) : acc_t(0);
    v[j] = w;
    sv += w;
    tv += w * (acc_t(1) - sp[j]);
  }
  const acc_t lse = mv + std::log(sv) - (m + std::log(Z));
  const acc_t leps = lm::log_bprmax_eps<acc_t>();
  const acc_t rho = lm::sigmoid(lse - leps);
  const acc_t R = Q * invZ;
  const acc_t inv_sv = acc_t(1) / sv;
  for (int64_t j = 0; j < C; ++j) {
    const acc_t sk = e[j] * invZ;
    g[j] = -rho * (v[j] * inv_sv * sp[j] - sk) + p.bpreg * sk * (acc_t(2) * r[j] + r[j] * r[j] - R);
  }
  g[pos] = -rho * tv * inv_sv;
  loss_out = -lm::log_add_exp(lse, leps) + p.bpreg * R;
  return true;
}

// The fused row pass: S [B,C] raw scores in, dL/dS (scaled by 1/B) out in place;
// cand [C] int64, log_q [C] or null, valid [B] or null, row_loss [B] (scaled).
template <typename scalar_t>
void row_pass_cpu(scalar_t* S, const int64_t* cand, const scalar_t* log_q, const bool* valid,
                  int64_t B, int64_t C, const lm::LossParams<scalar_t>& p, scalar_t* row_loss) {
  using acc_t = scalar_t;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    RowScratch<acc_t> s(C);
    std::vector<acc_t> r(C), g(C), shift(log_q ? C : 0);
    std::vector<uint8_t> neg(C);
    if (log_q)
      for (int64_t j = 0; j < C; ++j) shift[j] = p.logq * acc_t(log_q[j]);
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* row = S + b * C;
      if (valid && !valid[b]) {
        std::fill(row, row + C, scalar_t(0));
        row_loss[b] = 0;
        continue;
      }
      const int64_t target = cand[b];
      int64_t ns = 0;
      for (int64_t j = 0; j < C; ++j) {
        r[j] = lm::activate(acc_t(row[j]), p.activation, p.elu_alpha);
        const bool is_neg = j != b && !(p.mask_hits && cand[j] == target);
        neg[j] = is_neg;
        ns += is_neg;
      }
      acc_t loss = 0;
      if (!row_loss_grad<acc_t>(r.data(), neg.data(), C, b, acc_t(ns),
                                log_q ? shift.data() : nullptr, p, s, g.data(), loss)) {
        std::fill(row, row + C, scalar_t(0));
        row_loss[b] = 0;
        continue;
      }
      for (int64_t j = 0; j < C; ++j)
        row[j] = g[j] * lm::activate_grad(acc_t(row[j]), r[j], p.activation, p.elu_alpha) * p.scale;
      row_loss[b] = loss * p.scale;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sampled_loss_forward_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits) {
  const SampledLossDims d = check_sampled_loss_args(hidden, weight, bias, candidates, log_q, valid,
                                                    loss, activation, logq, /*check_ids=*/true);
  TORCH_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kDouble,
              "sampled_loss (CPU): hidden must be float32 or float64, got ", hidden.scalar_type());
  const at::Tensor h = hidden.contiguous();
  at::Tensor workspace = sampled_loss_scores(h, weight, bias, candidates, d);
  at::Tensor scores = workspace_grad_scores(workspace, d);
  const at::Tensor cand = candidates.contiguous();
  const bool use_logq = loss == loss_math::kCrossEntropy && logq > 0;
  const at::Tensor lq = use_logq ? log_q->contiguous() : at::Tensor();
  const at::Tensor vd = (valid.has_value() && valid->defined()) ? valid->contiguous() : at::Tensor();
  at::Tensor row_loss = at::empty({d.B}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "sampled_loss_forward_cpu", [&] {
    const lm::LossParams<scalar_t> p{loss,
                                     activation,
                                     scalar_t(elu_alpha),
                                     scalar_t(bpreg),
                                     scalar_t(logq),
                                     mask_hits,
                                     scalar_t(1.0 / static_cast<double>(d.B))};
    row_pass_cpu<scalar_t>(scores.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(),
                           use_logq ? lq.data_ptr<scalar_t>() : nullptr,
                           vd.defined() ? vd.data_ptr<bool>() : nullptr, d.B, d.C, p,
                           row_loss.data_ptr<scalar_t>());
  });
  return {row_loss.sum(), workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const at::Tensor& workspace) {
  return sampled_loss_backward_common(grad_loss, hidden, weight, bias, candidates, log_q, valid,
                                      loss, activation, elu_alpha, bpreg, logq, mask_hits,
                                      workspace);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) {
  m.impl("sampled_loss_forward", &gru4rec::sampled_loss_forward_cpu);
  m.impl("sampled_loss_backward", &gru4rec::sampled_loss_backward_cpu);
}
