// gru4rec::step_inputs_: the inputs of one training step read on the device, through counters that
// live on the device, into static buffers, so that a captured CUDA graph reads the next step's
// inputs at every replay (SPEC section 8): row `step` of the epoch schedule (input ids, targets,
// reset and valid masks), the next K samples of the sampler's cache at `offset`, and the
// candidates' log q; then step += 1 and offset += K. Schema and checks; the kernels are
// csrc/cpu/step_inputs_cpu.cpp and csrc/cuda/kernels/step_inputs_kernels.cuh.
//
// Arguments: step, offset int64 [] (in place); inputs_all, targets_all int64 [S,B], reset_all,
// valid_all bool [S,B] (contiguous); cache int64 [Nc]; log_count, log_weight [N] (both or
// neither) float32/float64/bfloat16; out (in place): inputs int64 [B], candidates int64 [B+K]
// (targets, then samples), reset, valid bool [B], log_q [B+K] in the log tables' dtype
// (log_count[target] for the B targets, log_weight[sample] for the K samples), or [0] without them;
// update_ids int64 [2B+K] (optional): the rows the step's sparse updates touch, as train_step_
// takes them: the targets with -1 for the rows that are not valid, the samples, the input ids with
// -1 for the rows that are not valid.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "step_inputs.h"

namespace gru4rec {

StepInputDims check_step_inputs_args(const at::Tensor& step, const at::Tensor& offset, const at::Tensor& inputs_all,
                                     const at::Tensor& targets_all, const at::Tensor& reset_all,
                                     const at::Tensor& valid_all, const at::Tensor& cache,
                                     const std::optional<at::Tensor>& log_count,
                                     const std::optional<at::Tensor>& log_weight, const at::Tensor& inputs,
                                     const at::Tensor& candidates, const at::Tensor& reset, const at::Tensor& valid,
                                     const at::Tensor& log_q, const std::optional<at::Tensor>& update_ids) {
  const auto device = inputs_all.device();
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"step", &step}, {"offset", &offset}}) {
    TORCH_CHECK(t->dim() == 0 && t->scalar_type() == at::kLong, "step_inputs_: ", name,
                " must be a 0-dim int64 tensor, got ", t->scalar_type(), " with ", t->dim(), " dims");
  }
  TORCH_CHECK(inputs_all.dim() == 2, "step_inputs_: inputs_all must be [S, B], got ", inputs_all.sizes());
  const int64_t S = inputs_all.size(0), B = inputs_all.size(1);
  TORCH_CHECK(B >= 1, "step_inputs_: the schedule must have B >= 1 rows");
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"inputs_all", &inputs_all}, {"targets_all", &targets_all}, {"reset_all", &reset_all}, {"valid_all", &valid_all}};
  for (const auto& [name, t] : all) {
    TORCH_CHECK(t->sizes() == inputs_all.sizes() && t->is_contiguous(), "step_inputs_: ", name,
                " must be a contiguous [S=", S, ", B=", B, "] tensor, got ", t->sizes());
    const bool mask = t == &reset_all || t == &valid_all;
    TORCH_CHECK(t->scalar_type() == (mask ? at::kBool : at::kLong), "step_inputs_: ", name, " must be ",
                mask ? "bool" : "int64", ", got ", t->scalar_type());
  }
  TORCH_CHECK(cache.dim() == 1 && cache.scalar_type() == at::kLong && cache.is_contiguous(),
              "step_inputs_: cache must be a contiguous 1-D int64 tensor, got ", cache.scalar_type(), " ",
              cache.sizes());
  TORCH_CHECK(inputs.dim() == 1 && inputs.size(0) == B && inputs.scalar_type() == at::kLong && inputs.is_contiguous(),
              "step_inputs_: inputs must be a contiguous int64 [B=", B, "] tensor, got ", inputs.scalar_type(), " ",
              inputs.sizes());
  TORCH_CHECK(candidates.dim() == 1 && candidates.size(0) >= B && candidates.scalar_type() == at::kLong &&
                  candidates.is_contiguous(),
              "step_inputs_: candidates must be a contiguous int64 [B+K] tensor (B=", B, "), got ",
              candidates.scalar_type(), " ", candidates.sizes());
  const int64_t K = candidates.size(0) - B;
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"reset", &reset}, {"valid", &valid}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B && t->scalar_type() == at::kBool && t->is_contiguous(),
                "step_inputs_: ", name, " must be a contiguous bool [B=", B, "] tensor, got ", t->scalar_type(), " ",
                t->sizes());
  }
  const bool has_lc = log_count.has_value() && log_count->defined();
  const bool has_lw = log_weight.has_value() && log_weight->defined();
  TORCH_CHECK(has_lc == has_lw, "step_inputs_: give both log_count and log_weight, or neither");
  if (has_lc) {
    const auto dt = log_count->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                "step_inputs_: log_count must be float32, float64 or bfloat16, got ", dt);
    TORCH_CHECK(log_count->dim() == 1 && log_count->is_contiguous() && log_weight->sizes() == log_count->sizes() &&
                    log_weight->is_contiguous() && log_weight->scalar_type() == dt,
                "step_inputs_: log_count and log_weight must be contiguous [N] tensors of one dtype, got ",
                log_count->sizes(), " ", dt, " and ", log_weight->sizes(), " ", log_weight->scalar_type());
    TORCH_CHECK(log_q.dim() == 1 && log_q.size(0) == B + K && log_q.scalar_type() == dt && log_q.is_contiguous(),
                "step_inputs_: log_q must be a contiguous [B+K=", B + K, "] tensor of the log tables' dtype ", dt,
                ", got ", log_q.scalar_type(), " ", log_q.sizes());
  } else {
    TORCH_CHECK(log_q.numel() == 0, "step_inputs_: log_q must be empty without log_count and log_weight, got ",
                log_q.sizes());
  }
  const bool has_upd = update_ids.has_value() && update_ids->defined();
  if (has_upd) {
    TORCH_CHECK(update_ids->dim() == 1 && update_ids->size(0) == 2 * B + K && update_ids->scalar_type() == at::kLong &&
                    update_ids->is_contiguous() && update_ids->device() == device,
                "step_inputs_: update_ids must be a contiguous int64 [2B+K=", 2 * B + K, "] tensor on ", device,
                ", got ", update_ids->scalar_type(), " ", update_ids->sizes(), " on ", update_ids->device());
  }
  const at::Tensor* every[] = {&step, &offset, &targets_all, &reset_all, &valid_all, &cache,
                               &inputs, &candidates, &reset, &valid, &log_q};
  for (const at::Tensor* t : every) {
    TORCH_CHECK(t->device() == device, "step_inputs_: every tensor must be on ", device, " (inputs_all's), one is on ",
                t->device());
  }
  if (has_lc) {
    TORCH_CHECK(log_count->device() == device && log_weight->device() == device,
                "step_inputs_: log_count and log_weight must be on ", device);
  }
  return {S, B, K, cache.size(0), has_lc, has_upd};
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // See the top of this file: reads schedule row `step` and K samples at `offset` into the static
  // buffers (and the update rows into update_ids when given), then advances step by 1 and offset
  // by K (all on the tensors' device).
  m.def("step_inputs_(Tensor(a!) step, Tensor(b!) offset, Tensor inputs_all, Tensor targets_all, Tensor reset_all, "
        "Tensor valid_all, Tensor cache, Tensor? log_count, Tensor? log_weight, Tensor(c!) inputs, "
        "Tensor(d!) candidates, Tensor(e!) reset, Tensor(f!) valid, Tensor(g!) log_q, "
        "Tensor(h!)? update_ids=None) -> ()");
}
