// CPU row gathers split over the package's worker threads (see csrc/row_gather.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "cpu/thread_pool.h"
#include "row_gather.h"

namespace gru4rec {
namespace cpu {

void gather_rows(at::Tensor& out, const at::Tensor& src, const at::Tensor& idx) {
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1, "gather_rows: idx must be 1-D int64");
  TORCH_CHECK(src.dim() >= 1 && out.dim() == src.dim() && out.size(0) == idx.size(0) &&
                  out.numel() == idx.size(0) * (src.size(0) ? src.numel() / src.size(0) : 0) &&
                  out.scalar_type() == src.scalar_type(),
              "gather_rows: out must be [", idx.size(0), ", ...] shaped and typed like src's rows");
  const int64_t M = idx.size(0), N = src.size(0);
  if (M == 0) return;
  const int64_t row_bytes = static_cast<int64_t>(src.numel() / std::max<int64_t>(N, 1) * src.element_size());
  const int64_t* id = idx.const_data_ptr<int64_t>();
  const char* from = static_cast<const char*>(src.const_data_ptr());
  char* to = static_cast<char*>(out.mutable_data_ptr());
  // Rows per chunk: about 32 KiB of copying each.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(row_bytes, 1));
  // How far ahead the loads start: about 4 KiB of rows, at least 4 rows, at most 16.
  const int64_t ahead_rows = std::min<int64_t>(16, std::max<int64_t>(4, 4096 / std::max<int64_t>(row_bytes, 1)));
  parallel_for(M, grain, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      // The rows are random rows of a table that is mostly out of cache: the loads of the row
      // ahead_rows places on are started now, so that several rows' memory latencies overlap.
      if (m + ahead_rows < m1) {
        const int64_t ahead = id[m + ahead_rows];
        if (ahead >= 0 && ahead < N) {
          const char* c = from + ahead * row_bytes;
          for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(c + off, 0, 0);
        }
      }
      const int64_t r = id[m];
      TORCH_CHECK(r >= 0 && r < N, "gather_rows: index ", r, " is out of range [0, ", N, ")");
      std::memcpy(to + m * row_bytes, from + r * row_bytes, static_cast<size_t>(row_bytes));
    }
  });
}

}  // namespace cpu
}  // namespace gru4rec
