// torch.ops.gru4rec_emu.sparse_adagrad_: the CUDA kernel and launch of the sparse Adagrad update
// (csrc/cuda/kernels/sparse_adagrad_kernels.cuh) compiled for the host emulation, on CPU tensors,
// with the schema and checks of csrc/sparse_adagrad.cpp. Test-only.
#include "emu/emu_library.h"
#include "sparse_adagrad.cpp"  // NOLINT: the op's host code, schemas registered under gru4rec_emu

#include "cuda/kernels/sparse_adagrad_kernels.cuh"

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) {
  m.impl("sparse_adagrad_", &gru4rec::sparse_adagrad_cuda);
}
