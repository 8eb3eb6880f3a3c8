// gru4rec::train_step_: one whole GRU4Rec training step in one call (SPEC sections 3-5), so that
// the trainer's hot loop pays the Python and dispatch cost of one op per step instead of about
// sixty. It runs exactly the trainer's sequence (gru4rec_ext/train_step.py, compute_step with the
// "kernels" backend, then AdagradM's updates), through the same ops and in the same order, with
// the same draws from torch's default generator for the dropout masks, so it trains to the same
// weights. Registered for the CPU (its distinct-candidate scoring uses gru4rec::unique_ids).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "loss_math.h"
#include "row_gather.h"

namespace gru4rec {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Typed handles of the package's ops (the step runs below autograd: every tensor is detached).
auto& gru_forward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gru4rec::session_gru_forward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                 const Tensor&, const Tensor&, const OptTensor&,
                                                                 const OptTensor&, int64_t)>();
  return op;
}

auto& gru_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gru4rec::session_gru_backward", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
              const Tensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, int64_t, bool, bool)>();
  return op;
}

auto& loss_forward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gru4rec::sampled_loss_forward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         const OptTensor&, const OptTensor&, int64_t, int64_t, double,
                                                         double, double, bool, const OptTensor&)>();
  return op;
}

auto& loss_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gru4rec::sampled_loss_backward", "")
          .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const OptTensor&, const OptTensor&, int64_t, int64_t,
                                                    double, double, double, bool, const Tensor&, const OptTensor&)>();
  return op;
}

auto& unique_ids_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gru4rec::unique_ids", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, int64_t)>();
  return op;
}

auto& sparse_adagrad_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gru4rec::sparse_adagrad_", "")
                       .typed<void(Tensor&, Tensor&, Tensor&, const Tensor&, const Tensor&, double, double, double)>();
  return op;
}

auto& dense_adagrad_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gru4rec::dense_adagrad_", "")
                       .typed<void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double, double,
                                   double)>();
  return op;
}

enum InputMode : int64_t { kShared = 0, kEmbedding = 1, kOneHot = 2 };

// The dropout mask GRU4Rec's trainer draws: (u >= p) / (1 - p), u uniform like x.
Tensor dropout_mask(const Tensor& like, double p) { return at::rand_like(like).ge_(p).mul_(1.0 / (1.0 - p)); }

// The row-sparse update of one table (duplicates summed, negative indices skipped); a 1-D table is
// updated as [N, 1].
void sparse_update(Tensor param, Tensor acc, Tensor mom, const Tensor& idx, const Tensor& rows, double lr,
                   double momentum, double eps) {
  const auto as2d = [](const Tensor& t) { return t.dim() == 1 ? t.view({t.size(0), 1}) : t; };
  Tensor p = as2d(param), a = as2d(acc);
  Tensor m = momentum > 0 ? as2d(mom) : acc.new_empty({0, 1});
  sparse_adagrad_op().call(p, a, m, idx.contiguous(), as2d(rows.contiguous()), lr, momentum, eps);
}

// inputs, targets int64 [B]; reset bool [B]; valid bool [B] or None; samples int64 [K];
// log_count, log_weight [N] (log q of targets / samples; used by cross-entropy with logq > 0);
// hidden [L,B,H]. tables = [Wy, By] or [Wy, By, E] with their Adagrad accs and moms (moms [] when
// momentum == 0); gru_params = per layer weight_ih, weight_hh, bias_ih, bias_hh, with accs, moms.
// Returns (loss [] , new hidden [L,B,H]) and updates every parameter and its state in place: the GRU
// weights densely, except a one-hot model's layer-0 weight_ih [3H,N], whose columns of the step's
// input items are updated (like the item tables' rows). Every shape is fixed: at the epoch tail the
// rows that must not update get index -1.
std::tuple<Tensor, Tensor> train_step_cpu(
    const Tensor& inputs, const Tensor& targets, const Tensor& reset, const OptTensor& valid, const Tensor& samples,
    const OptTensor& log_count, const OptTensor& log_weight, const Tensor& hidden, at::TensorList tables,
    at::TensorList table_accs, at::TensorList table_moms, at::TensorList gru_params, at::TensorList gru_accs,
    at::TensorList gru_moms, at::IntArrayRef variants, int64_t input_mode, double dropout_embed,
    double dropout_hidden, int64_t loss, int64_t activation, double elu_alpha, double bpreg, double logq,
    bool mask_hits, double lr, double momentum, double eps) {
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
  const Tensor& Wy = tables[0];
  const Tensor& By = tables[1];
  const int64_t n_items = Wy.size(0);

  // Forward through the layers (dropout as in GRU4Rec.hidden_forward).
  Tensor x = input_mode == kShared ? gather_rows(Wy, inputs) : (has_e ? gather_rows(tables[2], inputs) : inputs);
  Tensor mask_e;
  if (dropout_embed > 0 && x.is_floating_point()) {
    mask_e = dropout_mask(x, dropout_embed);
    x = x * mask_e;
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
    auto [out, h_n, workspace] = gru_forward_op().call(inp, reset1, hidden[i], w[0], w[1], w[2], w[3], variants[i]);
    (void)h_n;
    Tensor y = out[0];
    Tensor mask;
    if (dropout_hidden > 0) {
      mask = dropout_mask(y, dropout_hidden);
      y = y * mask;
    }
    saved[i] = {inp, out, workspace, mask};
    outs[i] = y;
    x = y;
  }
  const Tensor& top = x;

  // The sampled loss over each distinct candidate item, and its row-sparse gradient.
  const Tensor candidates = at::cat({targets, samples});
  auto [unique, columns] = unique_ids_op().call(candidates, n_items);
  OptTensor log_q;
  if (loss == loss_math::kCrossEntropy && logq > 0) {
    TORCH_CHECK(log_count.has_value() && log_weight.has_value(),
                "train_step_: cross-entropy with logq > 0 needs log_count and log_weight");
    log_q = at::cat({log_count->index_select(0, targets), log_weight->index_select(0, samples)});
  }
  auto [loss_value, loss_ws] = loss_forward_op().call(top, Wy, By, unique, log_q, valid, loss, activation, elu_alpha,
                                                       bpreg, logq, mask_hits, columns);
  const Tensor one = at::ones({}, top.options());
  auto [grad_top, grad_w, grad_b] = loss_backward_op().call(one, top, Wy, By, unique, log_q, valid, loss, activation,
                                                             elu_alpha, bpreg, logq, mask_hits, loss_ws, columns);

  // Backward through the layers (h0 is detached: no grad_h0).
  std::vector<Tensor> gru_grads(4 * L);
  const Tensor zero_h = at::zeros_like(hidden[0]);  // grad of h_n: none (read only by the op)
  Tensor g = grad_top;
  for (int64_t i = L - 1; i >= 0; --i) {
    const Saved& s = saved[i];
    const Tensor* w = &gru_params[4 * i];
    if (s.mask.defined()) g = g * s.mask;
    const bool need_input = i > 0 || s.inp.is_floating_point();
    auto [g_in, g_h0, g_wih, g_whh, g_bih, g_bhh] =
        gru_backward_op().call(g.unsqueeze(0).contiguous(), zero_h, s.inp, reset1, hidden[i], w[0],
                               w[1], w[2], w[3], s.out, s.workspace, variants[i], need_input, false);
    (void)g_h0;
    gru_grads[4 * i] = g_wih.contiguous();
    gru_grads[4 * i + 1] = g_whh.contiguous();
    gru_grads[4 * i + 2] = g_bih.contiguous();
    gru_grads[4 * i + 3] = g_bhh.contiguous();
    g = g_in.numel() ? g_in[0] : Tensor();
  }
  if (g.defined() && mask_e.defined()) g = g * mask_e;

  // Epoch tail: rows without a session take no part in the updates either (their target items,
  // unless sampled or another row's target, and their input rows are not touched): their indices
  // become -1, which the sparse update skips, so no shape depends on the valid mask.
  Tensor upd_items = unique, upd_inputs = inputs;
  if (valid.has_value() && valid->defined()) {
    const Tensor keep = at::isin(unique, at::cat({at::where(*valid, targets, -1), samples}));
    upd_items = at::where(keep, unique, -1);
    upd_inputs = at::where(*valid, inputs, -1);
  }

  // Updates: the GRU densely (a one-hot model's layer-0 weight_ih on the columns of its input
  // items, from the row-sparse gradient [B,3H]), the item tables on their touched rows.
  const bool columns_wih = input_mode == kOneHot;
  const size_t first_dense = columns_wih ? 1 : 0;
  dense_adagrad_op().call(gru_params.slice(first_dense), gru_accs.slice(first_dense),
                          momentum > 0 ? gru_moms.slice(first_dense) : at::TensorList(),
                          at::TensorList(gru_grads).slice(first_dense), lr, momentum, eps);
  const auto mom_of = [&](size_t t) { return momentum > 0 ? table_moms[t] : Tensor(); };
  sparse_update(By, table_accs[1], mom_of(1), upd_items, grad_b, lr, momentum, eps);
  if (input_mode == kShared) {  // one update, so that a row touched twice is updated once
    sparse_update(Wy, table_accs[0], mom_of(0), at::cat({upd_items, upd_inputs}), at::cat({grad_w, g}), lr, momentum,
                  eps);
  } else {
    sparse_update(Wy, table_accs[0], mom_of(0), upd_items, grad_w, lr, momentum, eps);
    if (has_e) sparse_update(tables[2], table_accs[2], mom_of(2), upd_inputs, g, lr, momentum, eps);
  }
  if (columns_wih) {  // weight_ih.t() [N,3H] is a strided view: its rows are weight_ih's columns
    sparse_update(gru_params[0].t(), gru_accs[0].t(), momentum > 0 ? gru_moms[0].t() : Tensor(), upd_inputs,
                  gru_grads[0], lr, momentum, eps);
  }
  return {loss_value, at::stack(outs)};
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // One training step; see train_step_cpu above for the arguments. Returns (loss, new hidden).
  m.def(
      "train_step_(Tensor inputs, Tensor targets, Tensor reset, Tensor? valid, Tensor samples, Tensor? log_count, "
      "Tensor? log_weight, Tensor hidden, Tensor(a!)[] tables, Tensor(b!)[] table_accs, Tensor(c!)[] table_moms, "
      "Tensor(d!)[] gru_params, Tensor(e!)[] gru_accs, Tensor(f!)[] gru_moms, int[] variants, int input_mode, "
      "float dropout_embed, float dropout_hidden, int loss, int activation, float elu_alpha, float bpreg, "
      "float logq, bool mask_hits, float lr, float momentum, float eps) -> (Tensor loss, Tensor hidden)");
}

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("train_step_", &gru4rec::train_step_cpu); }
