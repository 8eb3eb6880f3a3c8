// gru4rec::train_step_: one whole GRU4Rec training step in one call (SPEC sections 3-5), so that
// the trainer's hot loop pays the Python and dispatch cost of one op per step instead of about
// sixty. It runs exactly the trainer's sequence (gru4rec_ext/train_step.py, compute_step with the
// "kernels" backend, then AdagradM's updates), through the same ops and in the same order, with
// the same draws from torch's default generator for the dropout masks, so it trains to the same
// weights. The composition (train_step_compose) is device-generic: the ops go through the
// dispatcher, and its `dedup` mode picks how the candidates are scored: on the CPU each distinct
// candidate item once (gru4rec::unique_ids and the loss's `columns`, CPU kernels), elsewhere the
// B+K candidate columns as they are, with the duplicates summed by the sparse update (the same
// update to float rounding, with no de-duplication). Registered here for the CPU and Meta; the CUDA
// registration is csrc/cuda/train_step_cuda.cu, the emulated one csrc/emu/train_step_emu.cpp.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu/uniform_cpu.h"
#include "loss_math.h"
#include "row_gather.h"
#include "train_step.h"

namespace gru4rec {

namespace {
c10::OperatorHandle find_op(const std::string& ns, const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((ns + "::" + name).c_str(), "");
}
}  // namespace

StepOps::StepOps(const std::string& ns_)
    : ns(ns_),
      gru_forward(find_op(ns, "session_gru_forward").typed<GruForwardFn>()),
      gru_backward(find_op(ns, "session_gru_backward").typed<GruBackwardFn>()),
      loss_forward(find_op(ns, "sampled_loss_forward").typed<LossForwardFn>()),
      loss_backward(find_op(ns, "sampled_loss_backward").typed<LossBackwardFn>()),
      sparse_adagrad(find_op(ns, "sparse_adagrad_").typed<SparseAdagradFn>()),
      sparse_adagrad_pair(find_op(ns, "sparse_adagrad_pair_").typed<SparseAdagradPairFn>()),
      dense_adagrad(find_op(ns, "dense_adagrad_").typed<DenseAdagradFn>()),
      dropout_apply(find_op(ns, "dropout_apply_").typed<DropoutApplyFn>()) {
  if (auto op = c10::Dispatcher::singleton().findSchema({ns + "::unique_ids", ""})) {
    unique_ids = op->typed<UniqueIdsFn>();
  }
}

namespace {

using at::Tensor;

enum InputMode : int64_t { kShared = 0, kEmbedding = 1, kOneHot = 2 };

// GRU4Rec's dropout of x (contiguous): the mask (u >= p) / (1 - p) from uniform draws u like x
// (torch's generator) into `mask`, and x * mask returned; one dropout_apply_ kernel after the draw
// (the same results as rand_like(x).ge_(p).mul_(1 / (1 - p)) and x * mask).
Tensor apply_dropout(const StepOps& ops, const Tensor& x, double p, Tensor& mask) {
#ifndef GRU4REC_CUDA_EMU
  mask = x.is_cpu() ? cpu::rand_like_fast(x) : at::rand_like(x);  // the same draws, a block at a time
#else
  mask = at::rand_like(x);  // the emulated CUDA step draws as the CUDA one does
#endif
  return ops.dropout_apply.call(mask, x, p);
}

// The row-sparse update of one table (duplicates summed, negative indices skipped); a 1-D table is
// updated as [N, 1].
Tensor as2d(const Tensor& t) { return t.dim() == 1 ? t.view({t.size(0), 1}) : t; }

void sparse_update(const StepOps& ops, Tensor param, Tensor acc, Tensor mom, const Tensor& idx, const Tensor& rows,
                   double lr, double momentum, double eps) {
  Tensor p = as2d(param), a = as2d(acc);
  Tensor m = momentum > 0 ? as2d(mom) : acc.new_empty({0, 1});
  ops.sparse_adagrad.call(p, a, m, idx.contiguous(), as2d(rows.contiguous()), lr, momentum, eps);
}

// cat({targets, samples}) [B+K], without the copy when the samples directly follow the targets in
// one buffer (gru4rec::step_inputs_ writes both into one candidates buffer).
Tensor candidates_of(const Tensor& targets, const Tensor& samples) {
  const bool joined = targets.is_contiguous() && samples.is_contiguous() && targets.dtype() == samples.dtype() &&
                      targets.device() == samples.device() && targets.has_storage() && samples.has_storage() &&
                      targets.storage().is_alias_of(samples.storage()) &&
                      samples.storage_offset() == targets.storage_offset() + targets.numel();
  if (joined) return targets.as_strided({targets.numel() + samples.numel()}, {1});
  return at::cat({targets, samples});
}

}  // namespace

// inputs, targets int64 [B]; reset bool [B]; valid bool [B] or None; samples int64 [K];
// log_count, log_weight [N] (log q of targets / samples; used by cross-entropy with logq > 0);
// hidden [L,B,H]. tables = [Wy, By] or [Wy, By, E] with their Adagrad accs and moms (moms [] when
// momentum == 0); gru_params = per layer weight_ih, weight_hh, bias_ih, bias_hh, with accs, moms.
// Returns (loss [] , new hidden [L,B,H]) and updates every parameter and its state in place: the GRU
// weights densely, except a one-hot model's layer-0 weight_ih [3H,N], whose columns of the step's
// input items are updated (like the item tables' rows). Every shape is fixed: at the epoch tail the
// rows that must not update get index -1. dedup and log_q: see csrc/train_step.h.
std::tuple<Tensor, Tensor> train_step_compose(
    const StepOps& ops, bool dedup, const Tensor& inputs, const Tensor& targets, const Tensor& reset,
    const OptTensor& valid, const Tensor& samples, const OptTensor& log_count, const OptTensor& log_weight,
    const Tensor& hidden, at::TensorList tables, at::TensorList table_accs, at::TensorList table_moms,
    at::TensorList gru_params, at::TensorList gru_accs, at::TensorList gru_moms, at::IntArrayRef variants,
    int64_t input_mode, double dropout_embed, double dropout_hidden, int64_t loss, int64_t activation,
    double elu_alpha, double bpreg, double logq, bool mask_hits, double lr, double momentum, double eps,
    const OptTensor& given_log_q, const OptTensor& update_ids) {
  // The ops below run their kernels directly (no autograd layer: every tensor here is detached).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t L = static_cast<int64_t>(variants.size());
  const bool has_e = input_mode == kEmbedding;
  TORCH_CHECK(input_mode >= kShared && input_mode <= kOneHot, "train_step_: unknown input_mode ", input_mode,
              " (0 shared, 1 embedding, 2 one-hot)");
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(gru_params.size()) == 4 * L &&
                  static_cast<int64_t>(gru_accs.size()) == 4 * L,
              "train_step_: gru_params and gru_accs must hold 4 tensors per layer (", L, " layers), got ",
              gru_params.size(), " and ", gru_accs.size());
  TORCH_CHECK(static_cast<int64_t>(tables.size()) == (has_e ? 3 : 2) && table_accs.size() == tables.size(),
              "train_step_: tables (and table_accs) must be [Wy, By", has_e ? ", E" : "", "], got ", tables.size(),
              " tables");
  TORCH_CHECK(momentum <= 0 || (gru_moms.size() == gru_params.size() && table_moms.size() == tables.size()),
              "train_step_: with momentum > 0, gru_moms and table_moms must match gru_params and tables");
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(0) == L, "train_step_: hidden must be [L=", L, ", B, H], got ",
              hidden.sizes());
  TORCH_CHECK(inputs.dim() == 1 && targets.dim() == 1 && inputs.size(0) == targets.size(0) &&
                  inputs.size(0) == hidden.size(1),
              "train_step_: inputs and targets must be [B=", hidden.size(1), "], got ", inputs.sizes(), " and ",
              targets.sizes());
  TORCH_CHECK(!dedup || ops.unique_ids.has_value(), "train_step_: dedup=True needs ", ops.ns,
              "::unique_ids, which this build does not have");
  const bool has_update_ids = update_ids.has_value() && update_ids->defined();
  TORCH_CHECK(!has_update_ids || (!dedup && update_ids->dim() == 1 &&
                                  update_ids->size(0) == 2 * inputs.size(0) + samples.size(0) &&
                                  update_ids->scalar_type() == at::kLong),
              "train_step_: update_ids must be an int64 [2B+K=", 2 * inputs.size(0) + samples.size(0),
              "] tensor, and is for dedup=False only");
  const Tensor& Wy = tables[0];
  const Tensor& By = tables[1];
  const int64_t n_items = Wy.size(0);
  const bool has_valid = valid.has_value() && valid->defined();

  // Forward through the layers (dropout as in GRU4Rec.hidden_forward).
  Tensor x = input_mode == kShared ? gather_rows(Wy, inputs) : (has_e ? gather_rows(tables[2], inputs) : inputs);
  Tensor mask_e;
  if (dropout_embed > 0 && x.is_floating_point()) {
    x = apply_dropout(ops, x, dropout_embed, mask_e);
  }
  const Tensor reset1 = reset.unsqueeze(0);
  struct Saved {
    Tensor inp, out, workspace, mask;
  };
  std::vector<Saved> saved(L);
  std::vector<Tensor> outs(L);
  for (int64_t i = 0; i < L; ++i) {
    const Tensor* w = &gru_params[4 * i];
    const Tensor inp = x.unsqueeze(0);
    auto [out, h_n, workspace] = ops.gru_forward.call(inp, reset1, hidden[i], w[0], w[1], w[2], w[3], variants[i]);
    (void)h_n;
    Tensor y = out[0];
    Tensor mask;
    if (dropout_hidden > 0) {
      y = apply_dropout(ops, y, dropout_hidden, mask);
    }
    saved[i] = {inp, out, workspace, mask};
    outs[i] = y;
    x = y;
  }
  const Tensor& top = x;

  // The sampled loss and its row-sparse gradient: over each distinct candidate item (dedup), or
  // over the B+K candidate columns (rows of grad_w and grad_b belong to `scored`).
  const Tensor candidates = candidates_of(targets, samples);
  Tensor scored = candidates;
  OptTensor columns;
  if (dedup) {
    auto [unique, cols] = ops.unique_ids->call(candidates, n_items);
    scored = unique;
    columns = cols;
  }
  OptTensor log_q;
  if (loss == loss_math::kCrossEntropy && logq > 0) {
    if (given_log_q.has_value() && given_log_q->defined()) {
      log_q = *given_log_q;
    } else {
      TORCH_CHECK(log_count.has_value() && log_weight.has_value(),
                  "train_step_: cross-entropy with logq > 0 needs log_count and log_weight (or log_q)");
      log_q = at::cat({log_count->index_select(0, targets), log_weight->index_select(0, samples)});
    }
  }
  auto [loss_value, loss_ws] = ops.loss_forward.call(top, Wy, By, scored, log_q, valid, loss, activation, elu_alpha,
                                                      bpreg, logq, mask_hits, columns);
  // The loss's gradients from the dL/dS its forward left in the workspace (the trainer's grad_loss
  // is 1: no backward op call, no ones fill, no multiply). With the shared table the loss's dL/dW[c]
  // goes straight into the first U rows of the one buffer the table's update reads, the input rows'
  // gradients later into the last B (no [U+B,H] concatenation). The loss's checks ran in its
  // forward. The CPU's dedup mode with a separate input table keeps the backward op (its results
  // stay those of the Python sequence bit for bit).
  const int64_t U = scored.size(0), B = top.size(0), H = top.size(1);
  const bool direct_grads = !dedup || input_mode == kShared;
  Tensor grad_top, grad_w, grad_b, shared_rows;
  if (direct_grads) {
    if (input_mode == kShared) {
      shared_rows = at::empty({U + B, H}, top.options());
      grad_w = shared_rows.narrow(0, 0, U);
    } else {
      grad_w = at::empty({U, H}, top.options());
    }
    const SampledLossDims d{B, candidates.size(0), U, H, n_items};
    std::tie(grad_top, grad_b) = sampled_loss_grads_into(grad_w, workspace_grad_scores(loss_ws, d), loss_ws, top, d);
  } else {
    const Tensor one = at::ones({}, top.options());
    std::tie(grad_top, grad_w, grad_b) = ops.loss_backward.call(one, top, Wy, By, scored, log_q, valid, loss,
                                                                 activation, elu_alpha, bpreg, logq, mask_hits, loss_ws,
                                                                 columns);
  }

  // Backward through the layers (h0 is detached: no grad_h0).
  std::vector<Tensor> gru_grads(4 * L);
  const Tensor no_grad_h = hidden.new_empty({0});  // grad of h_n: none (empty: no zero fill)
  Tensor g = grad_top;
  for (int64_t i = L - 1; i >= 0; --i) {
    const Saved& s = saved[i];
    const Tensor* w = &gru_params[4 * i];
    if (s.mask.defined()) g = g * s.mask;
    const bool need_input = i > 0 || s.inp.is_floating_point();
    auto [g_in, g_h0, g_wih, g_whh, g_bih, g_bhh] =
        ops.gru_backward.call(g.unsqueeze(0).contiguous(), no_grad_h, s.inp, reset1, hidden[i], w[0], w[1], w[2], w[3],
                              s.out, s.workspace, variants[i], need_input, false);
    (void)g_h0;
    gru_grads[4 * i] = g_wih.contiguous();
    gru_grads[4 * i + 1] = g_whh.contiguous();
    gru_grads[4 * i + 2] = g_bih.contiguous();
    gru_grads[4 * i + 3] = g_bhh.contiguous();
    g = g_in.numel() ? g_in[0] : Tensor();
  }
  // The input rows' gradient, times the embedding dropout's mask: with the shared table straight
  // into the last B rows of its update buffer (the multiply and the copy in one kernel).
  if (input_mode == kShared) {
    Tensor rows = shared_rows.narrow(0, U, B);
    if (mask_e.defined()) {
      at::mul_out(rows, g, mask_e);
    } else {
      rows.copy_(g);
    }
    g = rows;
  } else if (g.defined() && mask_e.defined()) {
    g = g * mask_e;
  }

  // Epoch tail: rows without a session take no part in the updates either (their target items,
  // unless sampled or another row's target, and their input rows are not touched): their indices
  // become -1, which the sparse update skips, so no shape depends on the valid mask. Without
  // dedup a dropped row's target column has a zero gradient (the loss neither scores its row nor
  // takes its column as a negative), so -1 there leaves every other column of that item to update
  // it, as the dedup mode does.
  Tensor upd_items = scored, upd_inputs = inputs;
  if (has_valid && dedup) {
    const Tensor keep = at::isin(scored, at::cat({at::where(*valid, targets, -1), samples}));
    upd_items = at::where(keep, scored, -1);
    upd_inputs = at::where(*valid, inputs, -1);
  }

  // Updates: the GRU densely (a one-hot model's layer-0 weight_ih on the columns of its input
  // items, from the row-sparse gradient [B,3H]), the item tables on their touched rows.
  const bool columns_wih = input_mode == kOneHot;
  const size_t first_dense = columns_wih ? 1 : 0;
  ops.dense_adagrad.call(gru_params.slice(first_dense), gru_accs.slice(first_dense),
                         momentum > 0 ? gru_moms.slice(first_dense) : at::TensorList(),
                         at::TensorList(gru_grads).slice(first_dense), lr, momentum, eps);
  const auto mom_of = [&](size_t t) { return momentum > 0 ? table_moms[t] : Tensor(); };
  if (dedup) {
    sparse_update(ops, By, table_accs[1], mom_of(1), upd_items, grad_b, lr, momentum, eps);
    if (input_mode == kShared) {  // one update, so that a row touched twice is updated once
      sparse_update(ops, Wy, table_accs[0], mom_of(0), at::cat({upd_items, upd_inputs}), shared_rows, lr, momentum,
                    eps);
    } else {
      sparse_update(ops, Wy, table_accs[0], mom_of(0), upd_items, grad_w, lr, momentum, eps);
    }
  } else {
    // Wy and By in one update with one sort of the indices: By at the candidates only (the first
    // B+K indices), Wy at the candidates and, in shared mode, the input rows too.
    const bool shared = input_mode == kShared;
    Tensor idx;
    if (has_update_ids) {  // written by step_inputs_: no where/cat kernels here
      const int64_t C = candidates.size(0);
      idx = shared ? *update_ids : update_ids->narrow(0, 0, C);
      upd_inputs = update_ids->narrow(0, C, update_ids->size(0) - C);
    } else if (has_valid) {
      const Tensor dropped_targets = at::where(*valid, targets, -1);
      upd_inputs = at::where(*valid, inputs, -1);
      idx = shared ? at::cat({dropped_targets, samples, upd_inputs}) : at::cat({dropped_targets, samples});
    } else {
      idx = shared ? at::cat({candidates, inputs}) : candidates;
    }
    Tensor wy = Wy, wy_acc = table_accs[0], wy_mom = momentum > 0 ? table_moms[0] : Wy.new_empty({0, 1});
    Tensor by = as2d(By), by_acc = as2d(table_accs[1]),
           by_mom = momentum > 0 ? as2d(table_moms[1]) : table_accs[1].new_empty({0, 1});
    ops.sparse_adagrad_pair.call(wy, wy_acc, wy_mom, by, by_acc, by_mom, idx, shared ? shared_rows : grad_w,
                                 as2d(grad_b.contiguous()), lr, momentum, eps);
  }
  if (has_e) sparse_update(ops, tables[2], table_accs[2], mom_of(2), upd_inputs, g, lr, momentum, eps);
  if (columns_wih) {  // weight_ih.t() [N,3H] is a strided view: its rows are weight_ih's columns
    sparse_update(ops, gru_params[0].t(), gru_accs[0].t(), momentum > 0 ? gru_moms[0].t() : Tensor(), upd_inputs,
                  gru_grads[0], lr, momentum, eps);
  }
  // The new hidden state: the top layer's output itself for one layer (no copy).
  return {loss_value, L == 1 ? outs[0].unsqueeze(0) : at::stack(outs)};
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // One training step; see train_step_compose above for the arguments. Returns (loss, new hidden).
  // dedup: None picks the device's mode (CPU: True, else False); log_q [B+K]: the candidates' log
  // q gathered already (gru4rec::step_inputs_ writes it), else gathered from log_count/log_weight;
  // update_ids [2B+K] (dedup=False): the update rows as step_inputs_ writes them.
  m.def(
      "train_step_(Tensor inputs, Tensor targets, Tensor reset, Tensor? valid, Tensor samples, Tensor? log_count, "
      "Tensor? log_weight, Tensor hidden, Tensor(a!)[] tables, Tensor(b!)[] table_accs, Tensor(c!)[] table_moms, "
      "Tensor(d!)[] gru_params, Tensor(e!)[] gru_accs, Tensor(f!)[] gru_moms, int[] variants, int input_mode, "
      "float dropout_embed, float dropout_hidden, int loss, int activation, float elu_alpha, float bpreg, "
      "float logq, bool mask_hits, float lr, float momentum, float eps, bool? dedup=None, Tensor? log_q=None, "
      "Tensor? update_ids=None) -> (Tensor loss, Tensor hidden)");
}

#ifndef GRU4REC_CUDA_EMU  // the emulated op registers its own kernel (csrc/emu/train_step_emu.cpp)
TORCH_LIBRARY_IMPL(gru4rec, CPU, m) {
  m.impl("train_step_", &gru4rec::train_step_kernel<gru4rec::kGru4recOps, true>);
}
TORCH_LIBRARY_IMPL(gru4rec, Meta, m) {
  m.impl("train_step_", &gru4rec::train_step_kernel<gru4rec::kGru4recOps, false>);
}
#endif
