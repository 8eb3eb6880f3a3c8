// gru4rec::train_step_ for the CUDA key: the device-generic composition of csrc/train_step.cpp
// (through the dispatcher, so every op runs its CUDA kernel) in its no-dedup mode: the B+K
// candidate columns are scored as they are and the sparse updates sum duplicates (unique_ids and
// the loss's `columns` are CPU-only). No host sync: the step can be captured in a CUDA graph.
#include <torch/library.h>

#include "train_step.h"

TORCH_LIBRARY_IMPL(gru4rec, CUDA, m) {
  m.impl("train_step_", &gru4rec::train_step_kernel<gru4rec::kGru4recOps, false>);
}
