// Grouping of equal ids in O(M) (no sort), shared by the sparse Adagrad update and unique_ids.
#pragma once
#include <cstdint>
#include <vector>

namespace gru4rec {

// ids [M] in [0, N) -> groups of equal ids in order of first appearance: first[g] is the first
// position of group g, group[i] the group of position i, next[i] the next position with the same
// id (or -1), so following next from first[g] visits a group's positions in ascending order.
// Negative ids belong to no group (group[i] = -1): the sparse update skips them.
// Uses a per-thread table over [0, N) that is all -1 between calls (only touched entries are
// reset); it keeps the largest N seen (4 bytes per id).
struct IdGroups {
  std::vector<int64_t> first, next;
  std::vector<int32_t> group;

  int64_t size() const { return static_cast<int64_t>(first.size()); }

  void build(const int64_t* ids, int64_t M, int64_t N) {
    thread_local std::vector<int32_t> slot;
    if (static_cast<int64_t>(slot.size()) < N) slot.assign(N, -1);
    std::vector<int64_t> last;
    first.clear();
    next.assign(M, -1);
    group.resize(M);
    for (int64_t i = 0; i < M; ++i) {
      const int64_t r = ids[i];
      if (r < 0) {
        group[i] = -1;
        continue;
      }
      int32_t s = slot[r];
      if (s < 0) {
        s = slot[r] = static_cast<int32_t>(first.size());
        first.push_back(i);
        last.push_back(i);
      } else {
        next[last[s]] = i;
        last[s] = i;
      }
      group[i] = s;
    }
    for (int64_t f : first) slot[ids[f]] = -1;
  }
};

}  // namespace gru4rec
