// CUDA kernel of gru4rec::dropout_apply_, registered for the CUDA key (kernel and launch in
// csrc/cuda/kernels/dropout_kernels.cuh, which the host emulation compiles too).
#include <torch/library.h>

#include "cuda/kernels/dropout_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) { m.impl("dropout_apply_", &gru4rec::dropout_apply_cuda); }
