// CUDA kernel of gru4rec::sparse_adagrad_, registered for the CUDA key. The kernel and its launch
// are in csrc/cuda/kernels/sparse_adagrad_kernels.cuh, which the host emulation compiles too.
#include <torch/library.h>

#include "cuda/kernels/sparse_adagrad_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) {
  m.impl("sparse_adagrad_", &gru4rec::sparse_adagrad_cuda);
}
