// CPU kernel of gru4rec::unique_ids: one pass over the ids with a per-thread table (O(M), no sort).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/id_groups.h"

namespace gru4rec {
void check_unique_ids_args(const at::Tensor& ids, int64_t num_ids);

namespace {

// ids [M] -> unique [U], inverse [M].
std::tuple<at::Tensor, at::Tensor> unique_ids_cpu(const at::Tensor& ids_in, int64_t num_ids) {
  check_unique_ids_args(ids_in, num_ids);
  const at::Tensor ids = ids_in.contiguous();
  const int64_t M = ids.size(0);
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < M; ++i) {
    TORCH_CHECK(p[i] >= 0 && p[i] < num_ids, "unique_ids: ids[", i, "] = ", p[i], " is out of range [0, ",
                num_ids, ")");
  }
  IdGroups groups;
  groups.build(p, M, num_ids);
  const int64_t U = groups.size();
  at::Tensor unique = at::empty({U}, ids.options());
  at::Tensor inverse = at::empty({M}, ids.options());
  int64_t* u = unique.data_ptr<int64_t>();
  int64_t* inv = inverse.data_ptr<int64_t>();
  for (int64_t g = 0; g < U; ++g) u[g] = p[groups.first[g]];
  for (int64_t i = 0; i < M; ++i) inv[i] = groups.group[i];
  return {unique, inverse};
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) { m.impl("unique_ids", &gru4rec::unique_ids_cpu); }
