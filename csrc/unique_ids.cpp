// gru4rec::unique_ids: the distinct ids of a 1-D int64 tensor in order of first appearance, and
// for each position the index of its id among them. The trainer scores and updates each distinct
// candidate item once (csrc/sampled_loss.cpp's `columns`). Schema and checks; the CPU kernel is
// csrc/cpu/unique_ids_cpu.cpp (other devices use torch.unique in Python).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace gru4rec {

void check_unique_ids_args(const at::Tensor& ids, int64_t num_ids) {
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong,
              "unique_ids: ids must be a 1-D int64 tensor, got ", ids.scalar_type(), " with ", ids.dim(), " dims");
  TORCH_CHECK(num_ids >= 0 && num_ids < (int64_t(1) << 31), "unique_ids: num_ids must be in [0, 2^31), got ",
              num_ids);
  TORCH_CHECK(ids.size(0) < (int64_t(1) << 31), "unique_ids: at most 2^31 - 1 ids, got ", ids.size(0));
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // ids int64 [M], every id in [0, num_ids) -> (unique int64 [U] in order of first appearance,
  // inverse int64 [M] with unique[inverse[i]] == ids[i]).
  m.def("unique_ids(Tensor ids, int num_ids) -> (Tensor unique, Tensor inverse)");
}
