// torch.ops.gru4rec_emu.train_step_: the composition of gru4rec::train_step_ (csrc/train_step.cpp)
// in its CUDA mode (dedup=False), calling the gru4rec_emu ops, so that every op of the step runs its
// emulated CUDA kernel on CPU tensors: the CUDA step's logic runs in every CI run. Test-only.
#include "emu/emu_library.h"
#include "train_step.cpp"  // NOLINT: the composition, its schema registered under gru4rec_emu

namespace gru4rec {
inline constexpr char kEmuOps[] = "gru4rec_emu";
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec_emu, CPU, m) { m.impl("train_step_", &gru4rec::train_step_kernel<gru4rec::kEmuOps, false>); }
