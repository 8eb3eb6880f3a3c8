// Helpers shared by the C++ autograd Functions of the differentiable ops (session_gru_autograd.cpp,
// sampled_loss_autograd.cpp): a cached dispatcher handle, and the once-differentiable guard.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>
#include <utility>

namespace gru4rec {

using torch::autograd::variable_list;

// The typed dispatcher handle of gru4rec::<name> (looked up once per call site by the caller's
// function-local static).
template <class Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Gradients of a backward that computed them without a graph (the ops have no derivative of their
// own). When the backward runs with grad mode on (backward(create_graph=True)) and one of its
// inputs requires grad, the gradients get a node that raises `message` if they are differentiated
// again; used only once, they are fine (as torch.autograd.function.once_differentiable does).
inline variable_list once_differentiable(variable_list grads, const variable_list& backward_inputs,
                                         const std::string& message) {
  if (!torch::autograd::GradMode::is_enabled()) return grads;
  bool any = false;
  for (const auto& t : backward_inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return grads;
  for (auto& g : grads) {
    if (g.defined()) g = g.detach().requires_grad_(true);
  }
  auto error = std::make_shared<torch::autograd::DelayedError>(message,
                                                               static_cast<int64_t>(grads.size()));
  return (*error)(std::move(grads));
}

}  // namespace gru4rec
