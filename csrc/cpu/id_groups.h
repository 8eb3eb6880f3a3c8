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
    thread_local std::vector<int32_t> slot_table;
    thread_local std::vector<int64_t> last_table;  // each group's latest position so far
    std::vector<int32_t>& slot_vec = slot_table;    // one TLS lookup, not one per id
    std::vector<int64_t>& last = last_table;
    if (static_cast<int64_t>(slot_vec.size()) < N) slot_vec.assign(N, -1);
    int32_t* slot = slot_vec.data();
    last.resize(M);
    first.resize(M);
    next.assign(M, -1);
    group.resize(M);
    int64_t* fst = first.data();
    int64_t* lst = last.data();
    int64_t* nxt = next.data();
    int32_t* grp = group.data();
    int32_t G = 0;
    for (int64_t i = 0; i < M; ++i) {
      const int64_t r = ids[i];
      if (r < 0) {
        grp[i] = -1;
        continue;
      }
      int32_t s = slot[r];
      if (s < 0) {
        s = slot[r] = G++;
        fst[s] = i;
        lst[s] = i;
      } else {
        nxt[lst[s]] = i;
        lst[s] = i;
      }
      grp[i] = s;
    }
    first.resize(G);
    for (int32_t g = 0; g < G; ++g) slot[ids[fst[g]]] = -1;
  }
};

}  // namespace gru4rec
