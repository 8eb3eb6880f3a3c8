// Shared declarations of gru4rec::step_inputs_ (the graph-safe read of one training step's inputs).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace gru4rec {

// Sizes of one call: S steps in the schedule, B rows, K samples, Nc cached samples.
struct StepInputDims {
  int64_t S = 0, B = 0, K = 0, Nc = 0;
  bool log_q = false;       // log_count / log_weight given: log_q is written
  bool update_ids = false;  // update_ids given: written
};

// Throws (TORCH_CHECK) naming the bad argument; see csrc/step_inputs.cpp.
StepInputDims check_step_inputs_args(const at::Tensor& step, const at::Tensor& offset, const at::Tensor& inputs_all,
                                     const at::Tensor& targets_all, const at::Tensor& reset_all,
                                     const at::Tensor& valid_all, const at::Tensor& cache,
                                     const std::optional<at::Tensor>& log_count,
                                     const std::optional<at::Tensor>& log_weight, const at::Tensor& inputs,
                                     const at::Tensor& candidates, const at::Tensor& reset, const at::Tensor& valid,
                                     const at::Tensor& log_q, const std::optional<at::Tensor>& update_ids);

}  // namespace gru4rec
