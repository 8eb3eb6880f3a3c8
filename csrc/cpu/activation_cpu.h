// The loss's output activations (tanh, elu) over whole float32 score rows, for evaluation's
// all-item scores (gru4rec_ext/scoring.py). Implemented in csrc/cpu/sampled_loss_cpu.cpp beside
// the row pass that uses the same vector functions.
#pragma once

#include <cstdint>

namespace gru4rec {
namespace cpu {

// x[r*ld + j] = act(x[r*ld + j]) for r < rows, j < cols (activation: loss_math's kTanh or kElu),
// split over the package's threads. Every element goes through the same vector code (a row's tail
// through a padded vector), so equal scores stay equal wherever they sit, which the ranks' ties
// rely on. Returns false, touching nothing, when this CPU has no AVX2 (callers then use torch's).
bool activate_rows_f32(float* x, int64_t rows, int64_t cols, int64_t ld, int64_t activation,
                       float alpha);

}  // namespace cpu
}  // namespace gru4rec
