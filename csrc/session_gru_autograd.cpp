// gru4rec::session_gru: the differentiable session GRU (SPEC section 3), composed of
// gru4rec::session_gru_forward / session_gru_backward. Its autograd is a C++ autograd Function
// registered for the Autograd key, so a call from Python or C++ runs no Python beyond the call;
// below autograd (inference mode, tracing) it is the forward op without its workspace.
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

using ForwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                      const Tensor&, const Tensor&,
                                                      const OptTensor&, const OptTensor&, int64_t);
using BackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, int64_t, bool,
    bool);

const auto& forward_op() {
  static const auto op = op_handle<ForwardSig>("gru4rec::session_gru_forward");
  return op;
}

const auto& backward_op() {
  static const auto op = op_handle<BackwardSig>("gru4rec::session_gru_backward");
  return op;
}

// The dense [3H, N] gradient of weight_ih for id input from session_gru_backward's row-sparse
// one, [T*B, 3H] (row t*B+b is the gradient of column input[t, b], duplicates not summed): the
// rows are summed into their columns. The drop-in module's parameter takes a dense gradient.
Tensor dense_id_weight_grad(const Tensor& rows, const Tensor& input, const Tensor& weight_ih) {
  return at::zeros_symint(weight_ih.sym_sizes(), rows.options())
      .index_add_(1, input.reshape({-1}), rows.t());
}

const char* const kDoubleBackward =
    "gru4rec::session_gru: double backward (differentiating its gradients again) is not "
    "supported; its backward is gru4rec::session_gru_backward, which has no derivative";

struct SessionGruFunction : public torch::autograd::Function<SessionGruFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& reset,
                               const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
                               const OptTensor& bias_ih, const OptTensor& bias_hh,
                               int64_t variant) {
    at::AutoDispatchBelowADInplaceOrView below;  // straight to the backend (or tracing) kernel
    auto [out, h_n, ws] =
        forward_op().call(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant);
    // What session_gru_backward reads: the arguments (biases only for their presence and shape),
    // the output (each step's previous state) and the gate workspace. h_n is out[T-1].
    ctx->save_for_backward({input, reset, h0, weight_ih, weight_hh, bias_ih.value_or(Tensor()),
                            bias_hh.value_or(Tensor()), out, ws});
    ctx->saved_data["variant"] = variant;
    return {out, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &reset = saved[1], &h0 = saved[2], &w_ih = saved[3],
                 &w_hh = saved[4], &b_ih = saved[5], &b_hh = saved[6], &out = saved[7],
                 &ws = saved[8];
    // Gradient slots follow the Tensor arguments that were given: absent biases have none.
    const bool has_b_ih = b_ih.defined(), has_b_hh = b_hh.defined();
    const bool need_input = ctx->needs_input_grad(0), need_h0 = ctx->needs_input_grad(2);
    const bool need_w_ih = ctx->needs_input_grad(3), need_w_hh = ctx->needs_input_grad(4);
    const bool need_b_ih = has_b_ih && ctx->needs_input_grad(5);
    const bool need_b_hh = has_b_hh && ctx->needs_input_grad(5 + has_b_ih);
    variable_list result(8);
    {
      at::AutoDispatchBelowADInplaceOrView below;
      auto [g_in, g_h0, g_w_ih, g_w_hh, g_b_ih, g_b_hh] = backward_op().call(
          grads[0], grads[1], input, reset, h0, w_ih, w_hh, has_b_ih ? OptTensor(b_ih) : OptTensor(),
          has_b_hh ? OptTensor(b_hh) : OptTensor(), out, ws, ctx->saved_data["variant"].toInt(),
          need_input, need_h0);
      const bool ids = input.scalar_type() == at::kLong;
      if (need_input && !ids) result[0] = g_in;
      if (need_h0) result[2] = g_h0;
      if (need_w_ih) result[3] = ids ? dense_id_weight_grad(g_w_ih, input, w_ih) : g_w_ih;
      if (need_w_hh) result[4] = g_w_hh;
      if (need_b_ih) result[5] = g_b_ih;
      if (need_b_hh) result[6] = g_b_hh;
    }
    variable_list inputs = saved;
    inputs.insert(inputs.end(), grads.begin(), grads.end());
    return once_differentiable(std::move(result), inputs, kDoubleBackward);
  }
};

// Autograd key: the Function records the graph (when a Tensor argument requires grad).
std::tuple<Tensor, Tensor> session_gru_autograd(const Tensor& input, const Tensor& reset,
                                                const Tensor& h0, const Tensor& weight_ih,
                                                const Tensor& weight_hh, const OptTensor& bias_ih,
                                                const OptTensor& bias_hh, int64_t variant) {
  auto outs = SessionGruFunction::apply(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                                        variant);
  return {outs[0], outs[1]};
}

// Below autograd (inference mode, or a tracer that records the ops themselves): the forward op.
std::tuple<Tensor, Tensor> session_gru_no_grad(const Tensor& input, const Tensor& reset,
                                               const Tensor& h0, const Tensor& weight_ih,
                                               const Tensor& weight_hh, const OptTensor& bias_ih,
                                               const OptTensor& bias_hh, int64_t variant) {
  at::AutoDispatchBelowADInplaceOrView below;
  auto [out, h_n, ws] =
      forward_op().call(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant);
  return {out, h_n};
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // The differentiable session GRU: session_gru_forward's (output [T,B,H], h_n [B,H]) with
  // gradients to input (float input), h0, the weights and the biases through
  // session_gru_backward; the weight_ih gradient of id input is dense [3H,N]. Once differentiable.
  m.def(
      "session_gru(Tensor input, Tensor reset, Tensor h0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, int variant) -> (Tensor output, Tensor h_n)");
}

TORCH_LIBRARY_IMPL(gru4rec, Autograd, m) {
  m.impl("session_gru", &gru4rec::session_gru_autograd);
}

TORCH_LIBRARY_IMPL(gru4rec, CompositeExplicitAutograd, m) {
  m.impl("session_gru", &gru4rec::session_gru_no_grad);
}
