// Host side of the session GRU's CUDA kernels: the launch configuration, the dtype dispatch, the
// backend struct that session_gru_forward_impl / session_gru_backward_impl (csrc/session_gru.h)
// take, and the op entry points. Shared by the GPU build (csrc/cuda/session_gru_cuda.cu) and the
// host emulation (csrc/emu/session_gru_emu.cpp), so the emulated tests run this very code.
#pragma once

#include <algorithm>

#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/session_gru_kernels.cuh"

namespace gru4rec {
namespace {

constexpr int kGruThreads = 256;

// Blocks of kGruThreads for n elements, at most max_grid_blocks() (2^16; the kernels loop
// grid-stride).
int64_t gru_blocks(int64_t n) {
  return std::min<int64_t>((n + kGruThreads - 1) / kGruThreads, max_grid_blocks());
}

enum class FwdKernel { kCudnn, kGates, kCand };

template <typename scalar_t, bool kIds>
void (*fwd_kernel(FwdKernel which))(FwdStep) {
  switch (which) {
    case FwdKernel::kCudnn: return &forward_cudnn_kernel<scalar_t, kIds>;
    case FwdKernel::kGates: return &forward_gru4rec_gates_kernel<scalar_t, kIds>;
    default: return &forward_gru4rec_cand_kernel<scalar_t, kIds>;
  }
}

void launch_fwd(FwdKernel which, const FwdStep& s) {
  const int64_t n = s.B * s.H;
  if (n == 0) return;
  GRU4REC_CUDA_DISPATCH(s.dtype, "session_gru_forward_cuda", [&] {
    launch_kernel(s.ids != nullptr ? fwd_kernel<scalar_t, true>(which)
                                   : fwd_kernel<scalar_t, false>(which),
                  gru_blocks(n), kGruThreads, s);
  });
}

struct CudaKernels {
  static void forward_cudnn(const FwdStep& s) { launch_fwd(FwdKernel::kCudnn, s); }
  static void forward_gru4rec_gates(const FwdStep& s) { launch_fwd(FwdKernel::kGates, s); }
  static void forward_gru4rec_cand(const FwdStep& s) { launch_fwd(FwdKernel::kCand, s); }

  static void backward_cudnn(const BwdStep& s) {
    if (s.B * s.H == 0) return;
    GRU4REC_CUDA_DISPATCH(s.dtype, "session_gru_backward_cuda", [&] {
      launch_kernel(&backward_cudnn_kernel<scalar_t>, gru_blocks(s.B * s.H), kGruThreads, s);
    });
  }
  static void backward_gru4rec_cand(const BwdStep& s) {
    if (s.B * s.H == 0) return;
    GRU4REC_CUDA_DISPATCH(s.dtype, "session_gru_backward_cuda", [&] {
      launch_kernel(&backward_gru4rec_cand_kernel<scalar_t>, gru_blocks(s.B * s.H), kGruThreads, s);
    });
  }
  static void backward_gru4rec_gates(const BwdStep& s) {
    if (s.B * s.H == 0) return;
    GRU4REC_CUDA_DISPATCH(s.dtype, "session_gru_backward_cuda", [&] {
      launch_kernel(&backward_gru4rec_gates_kernel<scalar_t>, gru_blocks(s.B * s.H), kGruThreads,
                    s);
    });
  }

  static void zero_reset_rows(Tensor& x, const bool* reset) {
    const int64_t B = x.size(0), H = x.size(1);
    if (B * H == 0) return;
    GRU4REC_CUDA_DISPATCH(x.scalar_type(), "session_gru_backward_cuda", [&] {
      launch_kernel(&zero_reset_rows_kernel<scalar_t>, gru_blocks(B * H), kGruThreads,
                    x.mutable_data_ptr<scalar_t>(), reset, B, H);
    });
  }

  // Bias gradients (see session_gru.h: bias_grads_aten for the rule) in one launch of ours:
  // dgi's sums into grad_b_ih (and, for gru4rec, grad_b_hh), dgh's into grad_b_hh (cudnn).
  static std::pair<Tensor, Tensor> bias_grads(const Tensor& dgi, const Tensor& dgh, bool cudnn,
                                              bool has_b_ih, bool has_b_hh) {
    const int64_t R = dgi.size(0), W = dgi.size(1);
    const auto opts = dgi.options();
    Tensor gi = at::empty({has_b_ih ? W : 0}, opts), gh = at::empty({has_b_hh ? W : 0}, opts);
    if (W == 0 || (!has_b_ih && !has_b_hh)) return {gi, gh};
    GRU4REC_CUDA_DISPATCH(dgi.scalar_type(), "session_gru_backward_cuda", [&] {
      BiasSumJobs<scalar_t> jobs{};
      int n = 0;
      if (has_b_ih || (!cudnn && has_b_hh)) {
        jobs.src[n] = dgi.const_data_ptr<scalar_t>();
        jobs.dst[n] = has_b_ih ? gi.mutable_data_ptr<scalar_t>() : gh.mutable_data_ptr<scalar_t>();
        jobs.dst2[n] = has_b_ih && !cudnn && has_b_hh ? gh.mutable_data_ptr<scalar_t>() : nullptr;
        ++n;
      }
      if (cudnn && has_b_hh) {
        jobs.src[n] = dgh.const_data_ptr<scalar_t>();
        jobs.dst[n] = gh.mutable_data_ptr<scalar_t>();
        jobs.dst2[n] = nullptr;
        ++n;
      }
      launch_kernel(&bias_grads_kernel<scalar_t>,
                    dim3(static_cast<unsigned>((W + kBiasCols - 1) / kBiasCols), static_cast<unsigned>(n)),
                    dim3(kBiasCols, kBiasSlices), jobs, R, W);
    });
    return {gi, gh};
  }

  // Ids must be in [0, N). Not checked here: that would cost a host sync in every forward and
  // backward (SPEC section 8). The kernels assert it on the device (gi_row), and the trainer
  // validates the ids once, where the epoch schedule is built.
  static void check_ids(const Tensor& ids, int64_t N) {
    (void)ids;
    (void)N;
  }
};

// The op entry points. The arguments are checked before the device guard is built: a guard on a
// CPU weight_hh would throw before the check could name the argument on the wrong device.
std::tuple<Tensor, Tensor, Tensor> session_gru_forward_cuda(
    const Tensor& input, const Tensor& reset, const Tensor& h0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, int64_t variant) {
  check_session_gru_forward(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant);
  const DeviceGuard guard(weight_hh.device());
  return session_gru_forward_impl<CudaKernels>(input, reset, h0, weight_ih, weight_hh, bias_ih,
                                               bias_hh, variant);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> session_gru_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& reset,
    const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const Tensor& output, const Tensor& workspace, int64_t variant, bool need_grad_input,
    bool need_grad_h0) {
  check_session_gru_backward(grad_output, grad_h_n, input, reset, h0, weight_ih, weight_hh,
                             bias_ih, bias_hh, output, workspace, variant);
  const DeviceGuard guard(weight_hh.device());
  return session_gru_backward_impl<CudaKernels>(grad_output, grad_h_n, input, reset, h0,
                                                weight_ih, weight_hh, bias_ih, bias_hh, output,
                                                workspace, variant, need_grad_input, need_grad_h0);
}

}  // namespace
}  // namespace gru4rec
