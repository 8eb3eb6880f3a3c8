// CUDA kernel of gru4rec::step_inputs_, registered for the CUDA key (kernel and launch in
// csrc/cuda/kernels/step_inputs_kernels.cuh, which the host emulation compiles too).
#include <torch/library.h>

#include "cuda/kernels/step_inputs_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) { m.impl("step_inputs_", &gru4rec::step_inputs_cuda); }
