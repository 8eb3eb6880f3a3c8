// Host side of the sampled loss's CUDA kernel: the op entry points (argument checks, device
// guard, the score GEMM and the backward GEMMs through ATen, the row kernel's launch). Shared by
// the GPU build (csrc/cuda/sampled_loss_cuda.cu) and the host emulation
// (csrc/emu/sampled_loss_emu.cpp), so the emulated tests run this very code.
#pragma once

#include <ATen/ATen.h>

#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/sampled_loss_kernels.cuh"

namespace gru4rec {
namespace {

std::tuple<at::Tensor, at::Tensor> sampled_loss_forward_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const std::optional<at::Tensor>& columns) {
  TORCH_CHECK(!(columns.has_value() && columns->defined()),
              "sampled_loss (CUDA): columns is not supported on CUDA yet; pass the candidates "
              "(targets then samples) without columns");
  const SampledLossDims d = check_sampled_loss_args(hidden, weight, bias, candidates, log_q, valid,
                                                    loss, activation, logq, columns, /*check_ids=*/true);
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "sampled_loss (CUDA): hidden must be float32, float64 or bfloat16, got ", dtype);
  const DeviceGuard guard(hidden.device());
  const at::Tensor h = hidden.contiguous();
  // The scores without the bias: the row kernel adds bias[cand[j]] itself (no bias gather).
  at::Tensor workspace = sampled_loss_scores(h, weight, bias, candidates, d, /*add_bias=*/false);
  at::Tensor scores = workspace_grad_scores(workspace, d);
  const at::Tensor bias_c = bias.contiguous();
  const at::Tensor cand = candidates.contiguous();
  const bool use_logq = loss == lm::kCrossEntropy && logq > 0;
  const at::Tensor lq = use_logq ? log_q->contiguous() : at::Tensor();
  const at::Tensor vd = (valid.has_value() && valid->defined()) ? valid->contiguous() : at::Tensor();
  const auto acc_dtype = at::toOpMathType(dtype);
  at::Tensor row_loss = at::empty({d.B}, hidden.options().dtype(acc_dtype));
  GRU4REC_CUDA_DISPATCH(dtype, "sampled_loss_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const lm::LossParams<acc_t> p{loss,
                                  activation,
                                  static_cast<acc_t>(elu_alpha),
                                  static_cast<acc_t>(bpreg),
                                  static_cast<acc_t>(logq),
                                  mask_hits,
                                  static_cast<acc_t>(1.0 / static_cast<double>(d.B))};
    // One block per row (d.B >= 1: checked above).
    const bool few = d.B <= kFewLossRows;
    launch_kernel(few ? &sampled_loss_row_kernel<kLossThreadsFew, scalar_t, acc_t>
                      : &sampled_loss_row_kernel<kLossThreadsMany, scalar_t, acc_t>,
                  static_cast<unsigned>(d.B), few ? kLossThreadsFew : kLossThreadsMany, scores.data_ptr<scalar_t>(),
                  bias_c.data_ptr<scalar_t>(), cand.data_ptr<int64_t>(),
                  use_logq ? lq.data_ptr<scalar_t>() : nullptr,
                  vd.defined() ? vd.data_ptr<bool>() : nullptr, row_loss.data_ptr<acc_t>(), d.C, p);
  });
  at::Tensor total = row_loss.sum();
  return {dtype == acc_dtype ? total : total.to(dtype), workspace};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& candidates, const std::optional<at::Tensor>& log_q,
    const std::optional<at::Tensor>& valid, int64_t loss, int64_t activation, double elu_alpha,
    double bpreg, double logq, bool mask_hits, const at::Tensor& workspace,
    const std::optional<at::Tensor>& columns) {
  TORCH_CHECK(!(columns.has_value() && columns->defined()),
              "sampled_loss_backward (CUDA): columns is not supported on CUDA yet");
  // The checks come first (in the common part): the guard needs a CUDA device.
  check_sampled_loss_args(hidden, weight, bias, candidates, log_q, valid, loss, activation, logq,
                          columns, /*check_ids=*/false);
  const DeviceGuard guard(hidden.device());
  return sampled_loss_backward_common(grad_loss, hidden, weight, bias, candidates, log_q, valid,
                                      loss, activation, elu_alpha, bpreg, logq, mask_hits,
                                      workspace, columns);
}

}  // namespace
}  // namespace gru4rec
