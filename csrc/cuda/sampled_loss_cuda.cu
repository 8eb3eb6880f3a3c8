// CUDA kernels of gru4rec::sampled_loss_forward/backward, registered for the CUDA key: the score
// GEMM and the backward GEMMs go through ATen (cuBLAS); the fused per-row pass is one block per
// row with block reductions (csrc/cuda/kernels/sampled_loss_kernels.cuh, launched from
// sampled_loss_launch.cuh, which the host emulation compiles too). float, double and bfloat16
// (float accumulation); everything on the current stream, no host sync.
#include <torch/library.h>

#include "cuda/kernels/sampled_loss_launch.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) {
  m.impl("sampled_loss_forward", &gru4rec::sampled_loss_forward_cuda);
  m.impl("sampled_loss_backward", &gru4rec::sampled_loss_backward_cuda);
}
