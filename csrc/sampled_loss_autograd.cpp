// gru4rec::sampled_ranking_loss: the differentiable sampled ranking loss (SPEC section 4), composed
// of gru4rec::sampled_loss_forward / sampled_loss_backward with dense weight and bias gradients, or
// with sparse_grad=True sparse COO ones (the B+K candidates' rows, uncoalesced: no [N,H] buffer).
// Its autograd is a C++ autograd Function registered for the Autograd key, so a call from Python
// or C++ runs no Python beyond the call; below autograd it is the forward op's loss.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "autograd_util.h"

namespace gru4rec {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;

using ForwardSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, const OptTensor&, const OptTensor&,
                                              int64_t, int64_t, double, double, double, bool,
                                              const OptTensor&);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const OptTensor&, int64_t, int64_t, double, double, double, bool, const Tensor&,
    const OptTensor&);

const auto& forward_op() {
  static const auto op = op_handle<ForwardSig>("gru4rec::sampled_loss_forward");
  return op;
}

const auto& backward_op() {
  static const auto op = op_handle<BackwardSig>("gru4rec::sampled_loss_backward");
  return op;
}

// candidates [B+K] = targets [B] then samples [K], both 1-D int64 item ids.
Tensor candidates_of(const Tensor& targets, const Tensor& samples) {
  TORCH_CHECK_TYPE(targets.dim() == 1 && targets.scalar_type() == at::kLong,
                   "sampled_ranking_loss: targets must be a 1-D int64 tensor of item ids, got ",
                   targets.scalar_type(), " with ", targets.dim(), " dims");
  TORCH_CHECK_TYPE(samples.dim() == 1 && samples.scalar_type() == at::kLong,
                   "sampled_ranking_loss: samples must be a 1-D int64 tensor of item ids, got ",
                   samples.scalar_type(), " with ", samples.dim(), " dims");
  return at::cat({targets, samples});
}

// Dense gradient [N, ...] of a table from the gradients of its gathered rows (duplicates summed).
// index_add_ rather than index_put_(accumulate): on the CPU, 2,080 rows of 100 into [40000, 100]
// take 140-190 us against 350-430 us (1 thread), and the bias rows 10 us against 25-30 us.
Tensor dense_from_rows(const Tensor& rows, const Tensor& candidates, const Tensor& table) {
  return at::zeros_symint(table.sym_sizes(), rows.options()).index_add_(0, candidates, rows);
}

// The same gradient as a sparse COO tensor of the table's shape: one entry (a row of `rows`) per
// candidate, duplicates left uncoalesced, as nn.Embedding(sparse=True) gives. The candidates were
// checked by the forward, so the unchecked constructor is used (no host sync on CUDA).
Tensor sparse_from_rows(const Tensor& rows, const Tensor& candidates, const Tensor& table) {
  return at::_sparse_coo_tensor_unsafe(candidates.unsqueeze(0), rows, table.sizes(), rows.options().layout(at::kSparse));
}

const char* const kDoubleBackward =
    "gru4rec::sampled_ranking_loss: double backward (differentiating its gradients again) is not "
    "supported; its backward is gru4rec::sampled_loss_backward, which has no derivative";

struct SampledRankingLossFunction
    : public torch::autograd::Function<SampledRankingLossFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& hidden, const Tensor& weight,
                               const Tensor& bias, const Tensor& targets, const Tensor& samples,
                               const OptTensor& log_q, const OptTensor& valid, int64_t loss,
                               int64_t activation, double elu_alpha, double bpreg, double logq,
                               bool mask_hits, bool sparse_grad) {
    at::AutoDispatchBelowADInplaceOrView below;
    const Tensor candidates = candidates_of(targets, samples);
    auto [out, ws] = forward_op().call(hidden, weight, bias, candidates, log_q, valid, loss,
                                       activation, elu_alpha, bpreg, logq, mask_hits, {});
    // What sampled_loss_backward reads: hidden, the workspace (dL/dscores and the gathered rows),
    // the candidates; weight, bias, log_q and valid only for its argument checks.
    ctx->save_for_backward({hidden, weight, bias, candidates, log_q.value_or(Tensor()),
                            valid.value_or(Tensor()), ws});
    ctx->saved_data["loss"] = loss;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["elu_alpha"] = elu_alpha;
    ctx->saved_data["bpreg"] = bpreg;
    ctx->saved_data["logq"] = logq;
    ctx->saved_data["mask_hits"] = mask_hits;
    ctx->saved_data["sparse_grad"] = sparse_grad;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &hidden = saved[0], &weight = saved[1], &bias = saved[2], &candidates = saved[3],
                 &log_q = saved[4], &valid = saved[5], &ws = saved[6];
    const auto& d = ctx->saved_data;
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    variable_list result(14);
    if (need_h || need_w || need_b) {
      at::AutoDispatchBelowADInplaceOrView below;
      auto [g_h, g_w_rows, g_b_rows] = backward_op().call(
          grads[0], hidden, weight, bias, candidates,
          log_q.defined() ? OptTensor(log_q) : OptTensor(),
          valid.defined() ? OptTensor(valid) : OptTensor(), d.at("loss").toInt(),
          d.at("activation").toInt(), d.at("elu_alpha").toDouble(), d.at("bpreg").toDouble(),
          d.at("logq").toDouble(), d.at("mask_hits").toBool(), ws, {});
      if (need_h) result[0] = g_h;
      const auto table_grad = d.at("sparse_grad").toBool() ? &sparse_from_rows : &dense_from_rows;
      if (need_w) result[1] = table_grad(g_w_rows, candidates, weight);
      if (need_b) result[2] = table_grad(g_b_rows, candidates, bias);
    }
    variable_list inputs = saved;
    inputs.insert(inputs.end(), grads.begin(), grads.end());
    return once_differentiable(std::move(result), inputs, kDoubleBackward);
  }
};

// Autograd key: the Function records the graph (when hidden, weight or bias requires grad).
Tensor sampled_ranking_loss_autograd(const Tensor& hidden, const Tensor& weight,
                                     const Tensor& bias, const Tensor& targets,
                                     const Tensor& samples, const OptTensor& log_q,
                                     const OptTensor& valid, int64_t loss, int64_t activation,
                                     double elu_alpha, double bpreg, double logq,
                                     bool mask_hits, bool sparse_grad) {
  return SampledRankingLossFunction::apply(hidden, weight, bias, targets, samples, log_q, valid,
                                           loss, activation, elu_alpha, bpreg, logq,
                                           mask_hits, sparse_grad)[0];
}

// Below autograd: the forward op's loss.
Tensor sampled_ranking_loss_no_grad(const Tensor& hidden, const Tensor& weight, const Tensor& bias,
                                    const Tensor& targets, const Tensor& samples,
                                    const OptTensor& log_q, const OptTensor& valid, int64_t loss,
                                    int64_t activation, double elu_alpha, double bpreg,
                                    double logq, bool mask_hits, bool sparse_grad) {
  (void)sparse_grad;  // no gradients here
  at::AutoDispatchBelowADInplaceOrView below;
  return std::get<0>(forward_op().call(hidden, weight, bias, candidates_of(targets, samples),
                                       log_q, valid, loss, activation, elu_alpha, bpreg, logq,
                                       mask_hits, {}));
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // The differentiable sampled ranking loss: candidates = cat(targets [B], samples [K]), the
  // other arguments as sampled_loss_forward's; returns the 0-dim loss, with gradients to hidden
  // [B,H], weight [N,H] and bias [N] through sampled_loss_backward: dense, or with sparse_grad
  // sparse COO tensors of the candidates' rows (uncoalesced). Once differentiable.
  m.def(
      "sampled_ranking_loss(Tensor hidden, Tensor weight, Tensor bias, Tensor targets, "
      "Tensor samples, Tensor? log_q, Tensor? valid, int loss, int activation, float elu_alpha, "
      "float bpreg, float logq, bool mask_hits, bool sparse_grad=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(gru4rec, Autograd, m) {
  m.impl("sampled_ranking_loss", &gru4rec::sampled_ranking_loss_autograd);
}

TORCH_LIBRARY_IMPL(gru4rec, CompositeExplicitAutograd, m) {
  m.impl("sampled_ranking_loss", &gru4rec::sampled_ranking_loss_no_grad);
}
