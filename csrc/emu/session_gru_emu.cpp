// torch.ops.gru4rec_emu.session_gru_forward/backward: the CUDA kernels and launch code of the
// session GRU (csrc/cuda/kernels/session_gru_*.cuh) compiled for the host emulation, on CPU
// tensors, with the schemas and checks of csrc/session_gru.cpp. Test-only (gru4rec_ext._cuda_emu).
#include "emu/emu_library.h"
#include "session_gru.cpp"  // NOLINT: the op's host code, schemas registered under gru4rec_emu

#include "cuda/kernels/session_gru_launch.cuh"

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) {
  m.impl("session_gru_forward", &gru4rec::session_gru_forward_cuda);
  m.impl("session_gru_backward", &gru4rec::session_gru_backward_cuda);
}
