// Session-parallel epoch schedule (SPEC section 2): which item every slot feeds at every step.
// The builder itself uses ATen only, so the CMake op library compiles it too; the pybind11
// binding is defined here, inline, only for the Python extension build (TORCH_EXTENSION_NAME).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>
#endif

namespace gru4rec {

// offsets int64 [n_sessions+1], items int64 [n_events], order int64 [n_order] (session indices in
// the order they are taken) -> (inputs int64 [S,B], targets int64 [S,B], reset bool [S,B],
// valid bool [S,B]). Sessions shorter than 2 events are skipped; steps with no valid slot are
// not emitted; slots that run out in the same step take the next sessions in slot order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_schedule(
    const at::Tensor& offsets, const at::Tensor& items, int64_t batch_size, const at::Tensor& order);

#ifdef TORCH_EXTENSION_NAME
// Adds `build_schedule(offsets, items, batch_size, order)` to the pybind11 module `m`.
inline void bind_schedule(pybind11::module_& m) {
  m.def("build_schedule", &build_schedule, pybind11::arg("offsets"), pybind11::arg("items"),
        pybind11::arg("batch_size"), pybind11::arg("order"),
        "Session-parallel epoch schedule: (inputs, targets, reset, valid), each [S, B]",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
#endif

}  // namespace gru4rec
