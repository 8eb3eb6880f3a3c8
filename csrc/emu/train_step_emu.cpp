// torch.ops.gru4rec_emu.train_step_: the composition of gru4rec::train_step_ (csrc/train_step.cpp)
// in its CUDA mode (dedup=False), calling the gru4rec_emu ops, so that every op of the step runs its
// emulated CUDA kernel on CPU tensors: the CUDA step's logic runs in every CI run. Test-only.
#include "emu/emu_library.h"
#include "train_step.cpp"  // NOLINT: the composition, its schema registered under gru4rec_emu

namespace gru4rec {
namespace {

std::tuple<at::Tensor, at::Tensor> train_step_emu(
    const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& reset, const OptTensor& valid,
    const at::Tensor& samples, const OptTensor& log_count, const OptTensor& log_weight, const at::Tensor& hidden,
    at::TensorList tables, at::TensorList table_accs, at::TensorList table_moms, at::TensorList gru_params,
    at::TensorList gru_accs, at::TensorList gru_moms, at::IntArrayRef variants, int64_t input_mode,
    double dropout_embed, double dropout_hidden, int64_t loss, int64_t activation, double elu_alpha, double bpreg,
    double logq, bool mask_hits, double lr, double momentum, double eps, std::optional<bool> dedup,
    const OptTensor& log_q) {
  TORCH_CHECK(!dedup.value_or(false), "train_step_ (emulated CUDA): dedup=True is CPU-only");
  static const StepOps ops("gru4rec_emu");
  return train_step_compose(ops, false, inputs, targets, reset, valid, samples, log_count, log_weight, hidden,
                            tables, table_accs, table_moms, gru_params, gru_accs, gru_moms, variants, input_mode,
                            dropout_embed, dropout_hidden, loss, activation, elu_alpha, bpreg, logq, mask_hits, lr,
                            momentum, eps, log_q);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) { m.impl("train_step_", &gru4rec::train_step_emu); }
