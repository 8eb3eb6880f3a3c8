// CPU kernel of gru4rec::step_inputs_ (csrc/step_inputs.cpp): plain copies; the counters are read
// on the host (free on the CPU) and checked against the schedule's and the cache's sizes.
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "step_inputs.h"

namespace gru4rec {
namespace {

void step_inputs_cpu(at::Tensor& step, at::Tensor& offset, const at::Tensor& inputs_all,
                     const at::Tensor& targets_all, const at::Tensor& reset_all, const at::Tensor& valid_all,
                     const at::Tensor& cache, const std::optional<at::Tensor>& log_count,
                     const std::optional<at::Tensor>& log_weight, at::Tensor& inputs, at::Tensor& candidates,
                     at::Tensor& reset, at::Tensor& valid, at::Tensor& log_q,
                     const std::optional<at::Tensor>& update_ids) {
  const StepInputDims d = check_step_inputs_args(step, offset, inputs_all, targets_all, reset_all, valid_all, cache,
                                                 log_count, log_weight, inputs, candidates, reset, valid, log_q,
                                                 update_ids);
  const int64_t s = step.item<int64_t>(), o = offset.item<int64_t>();
  TORCH_CHECK(s >= 0 && s < d.S, "step_inputs_: step ", s, " is out of range for a schedule of ", d.S, " steps");
  TORCH_CHECK(o >= 0 && o + d.K <= d.Nc, "step_inputs_: offset ", o, " + K=", d.K, " is beyond the cache's ", d.Nc,
              " samples");
  const int64_t B = d.B, K = d.K;
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* cand = candidates.data_ptr<int64_t>();
  bool* rs = reset.data_ptr<bool>();
  bool* vd = valid.data_ptr<bool>();
  const int64_t* in_all = inputs_all.const_data_ptr<int64_t>() + s * B;
  const int64_t* tg_all = targets_all.const_data_ptr<int64_t>() + s * B;
  const bool* rs_all = reset_all.const_data_ptr<bool>() + s * B;
  const bool* vd_all = valid_all.const_data_ptr<bool>() + s * B;
  const int64_t* smp = cache.const_data_ptr<int64_t>() + o;
  for (int64_t b = 0; b < B; ++b) {
    in[b] = in_all[b];
    cand[b] = tg_all[b];
    rs[b] = rs_all[b];
    vd[b] = vd_all[b];
  }
  for (int64_t j = 0; j < K; ++j) cand[B + j] = smp[j];
  if (d.update_ids) {  // targets and inputs with -1 for the rows that are not valid, samples between
    int64_t* upd = update_ids->data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      upd[b] = vd[b] ? cand[b] : -1;
      upd[B + K + b] = vd[b] ? in[b] : -1;
    }
    std::copy(cand + B, cand + B + K, upd + B);
  }
  if (d.log_q) {
    const int64_t N = log_count->size(0);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, log_q.scalar_type(), "step_inputs_cpu", [&] {
      const scalar_t* lc = log_count->const_data_ptr<scalar_t>();
      const scalar_t* lw = log_weight->const_data_ptr<scalar_t>();
      scalar_t* lq = log_q.data_ptr<scalar_t>();
      for (int64_t j = 0; j < B + K; ++j) {
        TORCH_CHECK(cand[j] >= 0 && cand[j] < N, "step_inputs_: candidate item id ", cand[j],
                    " is out of range for log tables of ", N, " items");
        lq[j] = j < B ? lc[cand[j]] : lw[cand[j]];
      }
    });
  }
  step.fill_(s + 1);
  offset.fill_(o + K);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("step_inputs_", &gru4rec::step_inputs_cpu); }
