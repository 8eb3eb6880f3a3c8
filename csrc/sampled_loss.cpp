// gru4rec::sampled_loss_forward / sampled_loss_backward: the fused sampled ranking loss of
// GRU4Rec (SPEC section 4). This file holds the schemas, the argument checks shared by the CPU
// and CUDA kernels, and the device-independent steps (row gather + score GEMM, backward GEMMs).
// The fused per-row pass lives in csrc/cpu/sampled_loss_cpu.cpp and csrc/cuda/sampled_loss_cuda.cu.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "loss_math.h"
#include "products.h"
#include "row_gather.h"

namespace gru4rec {

namespace lm = loss_math;

SampledLossDims check_sampled_loss_args(const at::Tensor& hidden, const at::Tensor& weight,
                                        const at::Tensor& bias, const at::Tensor& candidates,
                                        const std::optional<at::Tensor>& log_q,
                                        const std::optional<at::Tensor>& valid, int64_t loss,
                                        int64_t activation, double logq,
                                        const std::optional<at::Tensor>& columns, bool check_ids) {
  TORCH_CHECK(hidden.dim() == 2, "sampled_loss: hidden must be [B, H], got ", hidden.dim(),
              " dims");
  TORCH_CHECK(weight.dim() == 2, "sampled_loss: weight must be [N, H], got ", weight.dim(),
              " dims");
  TORCH_CHECK(bias.dim() == 1, "sampled_loss: bias must be [N], got ", bias.dim(), " dims");
  const bool has_columns = columns.has_value() && columns->defined();
  TORCH_CHECK(candidates.dim() == 1, "sampled_loss: candidates must be ",
              has_columns ? "[U] (the item of each gathered row)" : "[C] (targets then samples)", ", got ",
              candidates.dim(), " dims");
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "sampled_loss: hidden has dtype ", dtype, "; the kernels support float32, float64 "
              "and bfloat16 (not half or float8): convert the model");
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "sampled_loss: weight dtype ",
              weight.scalar_type(), " differs from hidden dtype ", hidden.scalar_type());
  TORCH_CHECK(bias.scalar_type() == hidden.scalar_type(), "sampled_loss: bias dtype ",
              bias.scalar_type(), " differs from hidden dtype ", hidden.scalar_type());
  TORCH_CHECK(candidates.scalar_type() == at::kLong,
              "sampled_loss: candidates (targets, samples) must be int64 item ids, got ",
              candidates.scalar_type());
  const auto device = hidden.device();
  TORCH_CHECK(weight.device() == device, "sampled_loss: weight is on ", weight.device(),
              " but hidden is on ", device);
  TORCH_CHECK(bias.device() == device, "sampled_loss: bias is on ", bias.device(),
              " but hidden is on ", device);
  TORCH_CHECK(candidates.device() == device, "sampled_loss: candidates (targets, samples) are on ",
              candidates.device(), " but hidden is on ", device);

  const int64_t B = hidden.size(0), H = hidden.size(1), N = weight.size(0), U = candidates.size(0);
  if (has_columns) {
    TORCH_CHECK(columns->dim() == 1 && columns->scalar_type() == at::kLong,
                "sampled_loss: columns must be a 1-D int64 tensor (the gathered row of each loss column), got ",
                columns->scalar_type(), " with ", columns->dim(), " dims");
    TORCH_CHECK(columns->device() == device, "sampled_loss: columns are on ", columns->device(),
                " but hidden is on ", device);
  }
  const int64_t C = has_columns ? columns->size(0) : U;
  TORCH_CHECK(B >= 1, "sampled_loss: hidden must have at least one row (B >= 1)");
  TORCH_CHECK(weight.size(1) == H, "sampled_loss: weight has H=", weight.size(1),
              " columns but hidden has H=", H);
  TORCH_CHECK(bias.size(0) == N, "sampled_loss: bias has ", bias.size(0),
              " entries but weight has N=", N, " rows");
  TORCH_CHECK(C >= B, "sampled_loss: ", has_columns ? "columns" : "candidates", " has C=", C,
              " entries, fewer than the B=", B, " targets (C = B + K)");
  TORCH_CHECK(loss >= lm::kBPR && loss <= lm::kCrossEntropy, "sampled_loss: unknown loss code ",
              loss, " (0 bpr, 1 top1, 2 bpr-max, 3 top1-max, 4 cross-entropy)");
  TORCH_CHECK(activation >= lm::kLinear && activation <= lm::kElu,
              "sampled_loss: unknown activation code ", activation, " (0 linear, 1 tanh, 2 elu)");

  if (loss == lm::kCrossEntropy && logq > 0) {
    TORCH_CHECK(log_q.has_value() && log_q->defined(),
                "sampled_loss: log_q is required with the cross-entropy loss when logq > 0");
  }
  if (log_q.has_value() && log_q->defined()) {
    TORCH_CHECK(log_q->dim() == 1 && log_q->size(0) == C, "sampled_loss: log_q must be [C=", C,
                "], got ", log_q->sizes());
    TORCH_CHECK(log_q->scalar_type() == hidden.scalar_type(), "sampled_loss: log_q dtype ",
                log_q->scalar_type(), " differs from hidden dtype ", hidden.scalar_type());
    TORCH_CHECK(log_q->device() == device, "sampled_loss: log_q is on ", log_q->device(),
                " but hidden is on ", device);
  }
  if (valid.has_value() && valid->defined()) {
    TORCH_CHECK(valid->dim() == 1 && valid->size(0) == B, "sampled_loss: valid must be [B=", B,
                "], got ", valid->sizes());
    TORCH_CHECK(valid->scalar_type() == at::kBool, "sampled_loss: valid must be bool, got ",
                valid->scalar_type());
    TORCH_CHECK(valid->device() == device, "sampled_loss: valid is on ", valid->device(),
                " but hidden is on ", device);
  }
  // Id range: checked here on the CPU only. On CUDA it would cost a host sync per step; there the
  // gather's own device-side bounds check catches a bad id.
  if (check_ids && device.is_cpu() && U > 0) {
    const at::Tensor ids_t = candidates.contiguous();
    const int64_t* ids = ids_t.data_ptr<int64_t>();
    int64_t lo_v = ids[0], hi_v = ids[0];
    for (int64_t j = 1; j < U; ++j) {
      lo_v = ids[j] < lo_v ? ids[j] : lo_v;
      hi_v = ids[j] > hi_v ? ids[j] : hi_v;
    }
    TORCH_CHECK(lo_v >= 0, "sampled_loss: candidates (targets, samples) hold a negative item id ",
                lo_v);
    TORCH_CHECK(hi_v < N, "sampled_loss: candidates (targets, samples) hold item id ", hi_v,
                ", out of range for weight with N=", N, " rows");
  }
  if (check_ids && has_columns && device.is_cpu() && C > 0) {
    const at::Tensor cols_t = columns->contiguous();
    const int64_t* cols = cols_t.data_ptr<int64_t>();
    for (int64_t j = 0; j < C; ++j) {
      TORCH_CHECK(cols[j] >= 0 && cols[j] < U, "sampled_loss: columns[", j, "] = ", cols[j],
                  " is out of range for the U=", U, " candidates");
    }
  }
  return {B, C, U, H, N};
}

at::Tensor workspace_grad_scores(const at::Tensor& workspace, const SampledLossDims& d) {
  return workspace.narrow(0, 0, d.B * d.U).view({d.B, d.U});
}

at::Tensor workspace_rows(const at::Tensor& workspace, const SampledLossDims& d) {
  return workspace.narrow(0, d.B * d.U, d.U * d.H).view({d.U, d.H});
}

at::Tensor sampled_loss_scores(const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& candidates,
                               const SampledLossDims& d, bool add_bias) {
  at::Tensor workspace = at::empty({d.B * d.U + d.U * d.H}, hidden.options());
  at::Tensor rows = workspace_rows(workspace, d);
  gru4rec::gather_rows_out(rows, weight, candidates);
  at::Tensor scores = workspace_grad_scores(workspace, d);
  if (add_bias) {
    gru4rec::addmm_out(scores, gru4rec::gather_rows(bias, candidates), hidden, rows.t());
  } else {
    gru4rec::mm_out(scores, hidden, rows.t());
  }
  return workspace;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_loss_backward_common(
    const at::Tensor& grad_loss, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const at::Tensor& workspace,
    const std::optional<at::Tensor>& columns) {
  (void)elu_alpha;
  (void)bpreg;
  (void)mask_hits;
  // The forward already checked the ids; this call only rechecks shapes, dtypes and devices.
  const SampledLossDims d = check_sampled_loss_args(hidden, weight, bias, candidates, log_q, valid,
                                                    loss, activation, logq, columns,
                                                    /*check_ids=*/false);
  TORCH_CHECK(grad_loss.numel() == 1, "sampled_loss_backward: grad_loss must be a scalar, got ",
              grad_loss.sizes());
  TORCH_CHECK(grad_loss.device() == hidden.device(), "sampled_loss_backward: grad_loss is on ",
              grad_loss.device(), " but hidden is on ", hidden.device());
  TORCH_CHECK(workspace.dim() == 1 && workspace.size(0) == d.B * d.U + d.U * d.H,
              "sampled_loss_backward: workspace must be the forward's [B*U + U*H=",
              d.B * d.U + d.U * d.H, "] buffer, got ", workspace.sizes());
  TORCH_CHECK(workspace.scalar_type() == hidden.scalar_type() &&
                  workspace.device() == hidden.device(),
              "sampled_loss_backward: workspace dtype/device differ from hidden's");
  // On the CPU a grad_loss of 1 (the trainer's) is read for free and skips a [B,U] product.
  const bool unit = grad_loss.device().is_cpu() && grad_loss.item<double>() == 1.0;
  const at::Tensor grad_scores =
      unit ? workspace_grad_scores(workspace, d)
           : at::mul(workspace_grad_scores(workspace, d), grad_loss.reshape({}).to(hidden.scalar_type()));
  at::Tensor grad_weight_rows = at::empty({d.U, d.H}, hidden.options());
  auto [grad_hidden, grad_bias_rows] = sampled_loss_grads_into(grad_weight_rows, grad_scores, workspace, hidden, d);
  return {grad_hidden, grad_weight_rows, grad_bias_rows};
}

std::tuple<at::Tensor, at::Tensor> sampled_loss_grads_into(at::Tensor& grad_weight_rows, const at::Tensor& grad_scores,
                                                           const at::Tensor& workspace, const at::Tensor& hidden,
                                                           const SampledLossDims& d) {
  const at::Tensor rows = workspace_rows(workspace, d);
  at::Tensor grad_hidden = gru4rec::mm(grad_scores, rows);
  gru4rec::mm_out(grad_weight_rows, grad_scores.t(), hidden);
  return {grad_hidden, grad_scores.sum(0)};
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // hidden [B,H], weight [N,H], bias [N], candidates int64 [C] = B targets then K samples,
  // log_q [C] (cross-entropy with logq > 0), valid bool [B]. With columns int64 [C] (CPU only):
  // candidates [U] are the items of U gathered rows and loss column j scores row columns[j] (the
  // trainer passes distinct candidates, so each item is gathered, scored and updated once).
  // Returns the 0-dim loss and the workspace the backward reads (dL/dscores [B,U] and the
  // gathered rows [U,H], flattened).
  m.def(
      "sampled_loss_forward(Tensor hidden, Tensor weight, Tensor bias, Tensor candidates, "
      "Tensor? log_q, Tensor? valid, int loss, int activation, float elu_alpha, float bpreg, "
      "float logq, bool mask_hits, Tensor? columns=None) -> (Tensor loss, Tensor workspace)");
  // Gradients w.r.t. hidden [B,H] and the U gathered rows of weight [U,H] and bias [U]: row u
  // belongs to item candidates[u] and sums the gradients of the columns that score it (without
  // columns, one row per column: duplicates are not summed).
  m.def(
      "sampled_loss_backward(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor bias, "
      "Tensor candidates, Tensor? log_q, Tensor? valid, int loss, int activation, "
      "float elu_alpha, float bpreg, float logq, bool mask_hits, Tensor workspace, "
      "Tensor? columns=None) -> (Tensor grad_hidden, Tensor grad_weight_rows, Tensor grad_bias_rows)");
}
