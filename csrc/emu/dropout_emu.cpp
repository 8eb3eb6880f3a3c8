// torch.ops.gru4rec_emu.dropout_apply_: the CUDA kernel and launch of gru4rec::dropout_apply_
// (csrc/cuda/kernels/dropout_kernels.cuh) compiled for the host emulation, on CPU tensors, with the
// schema and checks of csrc/dropout.cpp. Test-only.
#include "emu/emu_library.h"
#include "dropout.cpp"  // NOLINT: the op's host code, schema registered under gru4rec_emu

#include "cuda/kernels/dropout_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) { m.impl("dropout_apply_", &gru4rec::dropout_apply_cuda); }
