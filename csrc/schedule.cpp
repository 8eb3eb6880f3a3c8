// The session-parallel epoch schedule builder (SPEC section 2); see schedule.h for the contract.
#include "schedule.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <vector>

namespace gru4rec {

namespace {

void check_index_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "build_schedule: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, "build_schedule: ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1, "build_schedule: ", name, " must be 1-D, got ", t.dim(), "-D");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_schedule(
    const at::Tensor& offsets_in, const at::Tensor& items_in, int64_t batch_size,
    const at::Tensor& order_in) {
  check_index_tensor(offsets_in, "offsets");
  check_index_tensor(items_in, "items");
  check_index_tensor(order_in, "order");
  TORCH_CHECK(batch_size > 0, "build_schedule: batch_size must be positive, got ", batch_size);
  TORCH_CHECK(offsets_in.numel() >= 1, "build_schedule: offsets must have n_sessions+1 >= 1 entries");
  const at::Tensor offsets_t = offsets_in.contiguous();
  const at::Tensor items_t = items_in.contiguous();
  const at::Tensor order_t = order_in.contiguous();
  const int64_t* offsets = offsets_t.data_ptr<int64_t>();
  const int64_t* items = items_t.data_ptr<int64_t>();
  const int64_t* order = order_t.data_ptr<int64_t>();
  const int64_t n_sessions = offsets_t.numel() - 1;
  const int64_t n_events = items_t.numel();
  TORCH_CHECK(offsets[0] == 0 && offsets[n_sessions] == n_events,
              "build_schedule: offsets must start at 0 and end at len(items) = ", n_events);
  for (int64_t s = 0; s < n_sessions; ++s) {
    TORCH_CHECK(offsets[s] <= offsets[s + 1], "build_schedule: offsets must not decrease (at ", s, ")");
  }

  // sessions that give pairs, in the order they are taken
  std::vector<int64_t> queue;
  queue.reserve(order_t.numel());
  for (int64_t i = 0; i < order_t.numel(); ++i) {
    const int64_t s = order[i];
    TORCH_CHECK(s >= 0 && s < n_sessions, "build_schedule: order[", i, "] = ", s,
                " is not a session index in [0, ", n_sessions, ")");
    if (offsets[s + 1] - offsets[s] >= 2) queue.push_back(s);
  }

  const int64_t B = batch_size;
  int64_t n_pairs = 0;
  for (int64_t s : queue) n_pairs += offsets[s + 1] - offsets[s] - 1;
  // Every step has at least one valid slot, so S <= n_pairs; with full slots S ~ n_pairs / B.
  std::vector<int64_t> in_rows, tg_rows;
  std::vector<uint8_t> reset_rows, valid_rows;
  const size_t guess = static_cast<size_t>((n_pairs / B + 16) * B);
  in_rows.reserve(guess);
  tg_rows.reserve(guess);
  reset_rows.reserve(guess);
  valid_rows.reserve(guess);

  std::vector<int64_t> pos(B, 0), end(B, 0);
  std::vector<uint8_t> active(B, 0), reset(B, 0);
  size_t next = 0;
  int64_t n_active = 0;
  for (int64_t b = 0; b < B && next < queue.size(); ++b, ++next) {
    pos[b] = offsets[queue[next]];
    end[b] = offsets[queue[next] + 1];
    active[b] = reset[b] = 1;
    ++n_active;
  }
  while (n_active > 0) {
    for (int64_t b = 0; b < B; ++b) {
      if (active[b]) {
        in_rows.push_back(items[pos[b]]);
        tg_rows.push_back(items[pos[b] + 1]);
      } else {
        in_rows.push_back(0);
        tg_rows.push_back(0);
      }
      reset_rows.push_back(reset[b]);
      valid_rows.push_back(active[b]);
    }
    for (int64_t b = 0; b < B; ++b) {
      reset[b] = 0;
      if (!active[b]) continue;
      ++pos[b];
      if (pos[b] + 1 < end[b]) continue;
      if (next < queue.size()) {
        pos[b] = offsets[queue[next]];
        end[b] = offsets[queue[next] + 1];
        reset[b] = 1;
        ++next;
      } else {
        active[b] = 0;
        --n_active;
      }
    }
  }

  const int64_t S = static_cast<int64_t>(in_rows.size()) / B;
  at::Tensor inputs = at::empty({S, B}, at::kLong);
  at::Tensor targets = at::empty({S, B}, at::kLong);
  at::Tensor reset_out = at::empty({S, B}, at::kBool);
  at::Tensor valid_out = at::empty({S, B}, at::kBool);
  if (S > 0) {
    std::memcpy(inputs.data_ptr<int64_t>(), in_rows.data(), in_rows.size() * sizeof(int64_t));
    std::memcpy(targets.data_ptr<int64_t>(), tg_rows.data(), tg_rows.size() * sizeof(int64_t));
    std::memcpy(reset_out.data_ptr<bool>(), reset_rows.data(), reset_rows.size());
    std::memcpy(valid_out.data_ptr<bool>(), valid_rows.data(), valid_rows.size());
  }
  return {inputs, targets, reset_out, valid_out};
}

}  // namespace gru4rec
