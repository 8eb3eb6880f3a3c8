// gru4rec::train_step_ for the CUDA key: the device-generic composition of csrc/train_step.cpp
// (through the dispatcher, so every op runs its CUDA kernel) in its no-dedup mode: the B+K
// candidate columns are scored as they are and the sparse updates sum duplicates (unique_ids and
// the loss's `columns` are CPU-only). No host sync: the step can be captured in a CUDA graph.
#include <torch/library.h>

#include "train_step.h"

namespace gru4rec {
namespace {

std::tuple<at::Tensor, at::Tensor> train_step_cuda(
    const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& reset, const OptTensor& valid,
    const at::Tensor& samples, const OptTensor& log_count, const OptTensor& log_weight, const at::Tensor& hidden,
    at::TensorList tables, at::TensorList table_accs, at::TensorList table_moms, at::TensorList gru_params,
    at::TensorList gru_accs, at::TensorList gru_moms, at::IntArrayRef variants, int64_t input_mode,
    double dropout_embed, double dropout_hidden, int64_t loss, int64_t activation, double elu_alpha, double bpreg,
    double logq, bool mask_hits, double lr, double momentum, double eps, std::optional<bool> dedup,
    const OptTensor& log_q) {
  TORCH_CHECK(!dedup.value_or(false), "train_step_ (CUDA): dedup=True needs gru4rec::unique_ids and the loss's "
              "columns, which are CPU-only; pass dedup=False or None on CUDA (the same update)");
  static const StepOps ops("gru4rec");
  return train_step_compose(ops, false, inputs, targets, reset, valid, samples, log_count, log_weight, hidden,
                            tables, table_accs, table_moms, gru_params, gru_accs, gru_moms, variants, input_mode,
                            dropout_embed, dropout_hidden, loss, activation, elu_alpha, bpreg, logq, mask_hits, lr,
                            momentum, eps, log_q);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) { m.impl("train_step_", &gru4rec::train_step_cuda); }
