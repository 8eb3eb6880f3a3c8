// torch.ops.gru4rec_emu.sampled_loss_forward/backward: the CUDA kernel and launch code of the
// sampled loss (csrc/cuda/kernels/sampled_loss_*.cuh) compiled for the host emulation, on CPU
// tensors, with the schemas and host code of csrc/sampled_loss.cpp. Test-only.
#include "emu/emu_library.h"
#include "sampled_loss.cpp"  // NOLINT: the op's host code, schemas registered under gru4rec_emu

#include "cuda/kernels/sampled_loss_launch.cuh"

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) {
  m.impl("sampled_loss_forward", &gru4rec::sampled_loss_forward_cuda);
  m.impl("sampled_loss_backward", &gru4rec::sampled_loss_backward_cuda);
}
