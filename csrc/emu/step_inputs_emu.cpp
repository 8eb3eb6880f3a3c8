// torch.ops.gru4rec_emu.step_inputs_: the CUDA kernel and launch of gru4rec::step_inputs_
// (csrc/cuda/kernels/step_inputs_kernels.cuh) compiled for the host emulation, on CPU tensors, with
// the schema and checks of csrc/step_inputs.cpp. Test-only.
#include "emu/emu_library.h"
#include "step_inputs.cpp"  // NOLINT: the op's host code, schema registered under gru4rec_emu

#include "cuda/kernels/step_inputs_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) { m.impl("step_inputs_", &gru4rec::step_inputs_cuda); }
