// gru4rec_ext._cuda_emu (test-only): importing it registers torch.ops.gru4rec_emu.*, our CUDA
// kernels and launch code run on CPU tensors through the host emulation of the CUDA execution
// model (csrc/emu/cuda_emu.h); tests/test_cuda_emulation.py checks them against the CPU kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "emu/cuda_emu.h"

namespace gru4rec_emu {
std::vector<float> selftest(const std::string& name);  // emu_selftest.cpp
int64_t launch_count();                                 // cuda_emu.cpp
}

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "gru4rec-ext CUDA kernels under a host emulation (ops under torch.ops.gru4rec_emu)";
  m.attr("ops") = pybind11::make_tuple("session_gru_forward", "session_gru_backward",
                                       "sampled_loss_forward", "sampled_loss_backward",
                                       "sparse_adagrad_", "sparse_adagrad_pair_",
                                       "dense_adagrad_", "step_inputs_", "train_step_",
                                       "dropout_apply_");
  m.def("selftest", &gru4rec_emu::selftest, pybind11::arg("name"),
        "Runs one of the emulation's own check kernels; returns its output or raises its error");
  m.def("launches", &gru4rec_emu::launch_count,
        "Kernel launches run by the emulation so far (to count the launches of a training step)");
  m.def(
      "set_schedule",
      [](const std::string& name) {
        TORCH_CHECK(name == "low_first" || name == "high_first",
                    "set_schedule: 'low_first' or 'high_first', got '", name, "'");
        const auto old = gru4rec_emu::set_schedule(name == "low_first"
                                                       ? gru4rec_emu::Schedule::kLowFirst
                                                       : gru4rec_emu::Schedule::kHighFirst);
        return std::string(old == gru4rec_emu::Schedule::kLowFirst ? "low_first" : "high_first");
      },
      pybind11::arg("name"),
      "Which ready thread of a block runs next: 'low_first' (default) or 'high_first' index; "
      "returns the previous schedule");
  // Settable limits of the emulated build (the GPU build's are constants).
  const auto def_limit = [&m](const char* name, int64_t& (*limit)(), int64_t least, const char* doc) {
    m.def(
        name,
        [name, limit, least](int64_t value) {
          TORCH_CHECK(value >= least, name, ": the value must be >= ", least, ", got ", value);
          const int64_t old = limit();
          limit() = value;
          return old;
        },
        pybind11::arg("value"), doc);
  };
  def_limit("set_max_grid_blocks", &gru4rec_emu::grid_block_limit, 1,
            "Sets the most blocks a grid-stride launch starts (default 2^16); returns the old value");
  def_limit("set_scan_max_indices", &gru4rec_emu::scan_index_limit, 0,
            "Sets the most indices the sparse Adagrad kernels take without a sort (default 8192; 0: "
            "always sort); returns the old value");
}
