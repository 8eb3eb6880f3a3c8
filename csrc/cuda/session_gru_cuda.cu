// CUDA kernels of gru4rec::session_gru_forward/backward, registered for the CUDA key. The kernels
// are in csrc/cuda/kernels/session_gru_kernels.cuh and their launch code in
// session_gru_launch.cuh, which the host emulation (csrc/emu/session_gru_emu.cpp) compiles too;
// products go through ATen (cuBLAS).
#include <torch/library.h>

#include "cuda/kernels/session_gru_launch.cuh"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) {
  m.impl("session_gru_forward", &gru4rec::session_gru_forward_cuda);
  m.impl("session_gru_backward", &gru4rec::session_gru_backward_cuda);
}
