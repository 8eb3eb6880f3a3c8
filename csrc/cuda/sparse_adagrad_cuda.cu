// CUDA kernels of gru4rec::sparse_adagrad_, sparse_adagrad_pair_ and dense_adagrad_, registered
// for the CUDA key. The kernels and their launch code are in csrc/cuda/kernels/sparse_adagrad_kernels.cuh, which the host emulation compiles too.
#include <torch/library.h>

#include "cuda/kernels/sparse_adagrad_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) {
  m.impl("sparse_adagrad_", &gru4rec::sparse_adagrad_cuda);
  m.impl("sparse_adagrad_pair_", &gru4rec::sparse_adagrad_pair_cuda);
  m.impl("dense_adagrad_", &gru4rec::dense_adagrad_cuda);
}
