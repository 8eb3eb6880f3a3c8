// gru4rec_ext._C: importing it registers the gru4rec::* torch ops (TORCH_LIBRARY blocks in the
// other translation units) and exposes host-side helpers through pybind11.
#include <torch/extension.h>

#include "cpu/thread_pool.h"
#include "schedule.h"

namespace {

// What this binary was built with; the Python side reports it and the tests check it.
pybind11::dict build_info() {
  pybind11::dict info;
#ifdef WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["torch_version"] = TORCH_VERSION;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gru4rec-ext compiled kernels (ops are under torch.ops.gru4rec)";
  m.def("build_info", &build_info, "What the extension was built with");
  m.def("set_num_threads", &gru4rec::cpu::set_pool_threads, pybind11::arg("n"),
        "Threads the CPU kernels use, the caller included (their own pool; see csrc/cpu/thread_pool.h)");
  m.def("get_num_threads", &gru4rec::cpu::pool_threads, "Threads the CPU kernels use");
  gru4rec::bind_schedule(m);
}
