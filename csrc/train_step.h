// The composition of gru4rec::train_step_ (csrc/train_step.cpp), shared by its registrations: the
// CPU (distinct candidates), CUDA (csrc/cuda/train_step_cuda.cu), Meta (host-side timing) and the
// host emulation's gru4rec_emu::train_step_ (csrc/emu/train_step_emu.cpp), which runs the CUDA
// mode's composition through the emulated CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace gru4rec {

using OptTensor = std::optional<at::Tensor>;

// The C++ types of the ops one step calls.
using GruForwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, const OptTensor&,
                                                                    const OptTensor&, int64_t);
using GruBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, int64_t, bool, bool);
using LossForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                         const at::Tensor&, const OptTensor&, const OptTensor&,
                                                         int64_t, int64_t, double, double, double, bool,
                                                         const OptTensor&);
using LossBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
    const OptTensor&, int64_t, int64_t, double, double, double, bool, const at::Tensor&, const OptTensor&);
using SparseAdagradFn = void(at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                             double, double);
using SparseAdagradPairFn = void(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double);
using DenseAdagradFn = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double, double, double);
using DropoutApplyFn = at::Tensor(at::Tensor&, const at::Tensor&, double);
using UniqueIdsFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t);

// Typed handles of the ops one step calls, all from one namespace ("gru4rec", or "gru4rec_emu").
struct StepOps {
  explicit StepOps(const std::string& ns);
  std::string ns;
  c10::TypedOperatorHandle<GruForwardFn> gru_forward;
  c10::TypedOperatorHandle<GruBackwardFn> gru_backward;
  c10::TypedOperatorHandle<LossForwardFn> loss_forward;
  c10::TypedOperatorHandle<LossBackwardFn> loss_backward;
  c10::TypedOperatorHandle<SparseAdagradFn> sparse_adagrad;
  c10::TypedOperatorHandle<SparseAdagradPairFn> sparse_adagrad_pair;
  c10::TypedOperatorHandle<DenseAdagradFn> dense_adagrad;
  c10::TypedOperatorHandle<DropoutApplyFn> dropout_apply;
  // The dedup mode's distinct candidates (a CPU kernel; absent from the emulation's namespace).
  std::optional<c10::TypedOperatorHandle<UniqueIdsFn>> unique_ids;
};

// One training step (arguments: csrc/train_step.cpp). dedup: score and update each distinct
// candidate item once (unique_ids + the loss's `columns`, CPU kernels only); else score the B+K
// candidate columns as they are and let the sparse updates sum duplicates (the same update, to
// float rounding; every device). log_q: the candidates' log q, gathered already (else gathered
// here from log_count / log_weight when the loss needs it). update_ids (no-dedup mode): the rows
// the sparse updates touch, [2B+K] as gru4rec::step_inputs_ writes them (else made here from
// valid, targets, samples and inputs).
std::tuple<at::Tensor, at::Tensor> train_step_compose(
    const StepOps& ops, bool dedup, const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& reset,
    const OptTensor& valid, const at::Tensor& samples, const OptTensor& log_count, const OptTensor& log_weight,
    const at::Tensor& hidden, at::TensorList tables, at::TensorList table_accs, at::TensorList table_moms,
    at::TensorList gru_params, at::TensorList gru_accs, at::TensorList gru_moms, at::IntArrayRef variants,
    int64_t input_mode, double dropout_embed, double dropout_hidden, int64_t loss, int64_t activation,
    double elu_alpha, double bpreg, double logq, bool mask_hits, double lr, double momentum, double eps,
    const OptTensor& log_q, const OptTensor& update_ids);


// The namespace of the package's ops, for train_step_kernel.
inline constexpr char kGru4recOps[] = "gru4rec";

// The registered kernels of gru4rec::train_step_ (CPU, Meta, CUDA) and gru4rec_emu::train_step_:
// train_step_compose over the ops of namespace Ns. kCanDedup: the key scores distinct candidates
// by default (the CPU); elsewhere dedup=True is refused, since unique_ids' output size is
// data-dependent and its kernel CPU-only (Meta then runs the CUDA mode through the fake kernels).
template <const char* Ns, bool kCanDedup>
std::tuple<at::Tensor, at::Tensor> train_step_kernel(
    const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& reset, const OptTensor& valid,
    const at::Tensor& samples, const OptTensor& log_count, const OptTensor& log_weight, const at::Tensor& hidden,
    at::TensorList tables, at::TensorList table_accs, at::TensorList table_moms, at::TensorList gru_params,
    at::TensorList gru_accs, at::TensorList gru_moms, at::IntArrayRef variants, int64_t input_mode,
    double dropout_embed, double dropout_hidden, int64_t loss, int64_t activation, double elu_alpha, double bpreg,
    double logq, bool mask_hits, double lr, double momentum, double eps, std::optional<bool> dedup,
    const OptTensor& log_q, const OptTensor& update_ids) {
  TORCH_CHECK(kCanDedup || !dedup.value_or(false), "train_step_ (", inputs.device().type(), ", ", Ns,
              "): dedup=True is CPU-only (gru4rec::unique_ids and the loss's columns); pass dedup=False or None "
              "here (the same update)");
  static const StepOps ops(Ns);
  return train_step_compose(ops, kCanDedup && dedup.value_or(true), inputs, targets, reset, valid, samples,
                            log_count, log_weight, hidden, tables, table_accs, table_moms, gru_params, gru_accs,
                            gru_moms, variants, input_mode, dropout_embed, dropout_hidden, loss, activation,
                            elu_alpha, bpreg, logq, mask_hits, lr, momentum, eps, log_q, update_ids);
}

}  // namespace gru4rec
