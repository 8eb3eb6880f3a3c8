// Included by the emulated op files (csrc/emu/*_emu.cpp) before they include an op's host code
// (csrc/<op>.cpp): its schema block `TORCH_LIBRARY_FRAGMENT(gru4rec, m)` then defines the very
// same schemas in the namespace gru4rec_emu, where the emulated CUDA kernels register for the
// CPU key (torch.ops.gru4rec_emu.*), next to the real ops of gru4rec_ext._C.
#pragma once

#include <torch/library.h>

#undef TORCH_LIBRARY_FRAGMENT
#define TORCH_LIBRARY_FRAGMENT(ns, m) _TORCH_LIBRARY_FRAGMENT(gru4rec_emu, m, C10_UID)
