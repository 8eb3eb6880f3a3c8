// CPU matrix products split over the package's worker threads (see csrc/products.h).
#include <ATen/ATen.h>

#include "cpu/gemm_f32.h"
#include "cpu/thread_pool.h"
#include "products.h"

namespace gru4rec {
namespace cpu {
namespace {

// Below about this many multiply-adds a product runs in one piece: splitting costs more than it saves.
constexpr int64_t kMinParallelMacs = 1 << 18;
// Pieces hold whole groups of this many rows or columns (SIMD- and cache-friendly edges); a
// split for gemm_f32 keeps its 8-row micro tiles and 48-column panels whole.
constexpr int64_t kAlign = 16;
constexpr int64_t kAlignOwnRows = 8;
constexpr int64_t kAlignOwnColumns = 48;

// Whether gemm_f32 takes this product: float32 throughout, one unit stride in each operand, and
// out's columns contiguous.
bool own_gemm_takes(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  if (out.scalar_type() != at::kFloat || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) return false;
  if (bias.defined() && (bias.scalar_type() != at::kFloat || bias.dim() != 1 || bias.stride(0) != 1)) return false;
  if (out.stride(1) != 1 && out.size(1) > 1) return false;
  if (a.stride(1) != 1 && a.stride(0) != 1) return false;
  if (b.stride(1) != 1 && b.stride(0) != 1) return false;
  return use_own_gemm();
}

void piece(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate, const at::Tensor& bias) {
  if (out.numel() > 0 && own_gemm_takes(out, a, b, bias)) {
    gemm_f32(out.size(0), out.size(1), a.size(1), a.const_data_ptr<float>(), a.stride(0), a.stride(1),
             b.const_data_ptr<float>(), b.stride(0), b.stride(1), out.mutable_data_ptr<float>(),
             out.stride(0), bias.defined() ? bias.const_data_ptr<float>() : nullptr, accumulate);
    return;
  }
  if (bias.defined()) {
    at::addmm_out(out, bias, a, b);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

}  // namespace

void mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate, const at::Tensor& bias) {
  const int64_t M = out.size(0), N = out.size(1), K = a.size(1);
  const int threads = pool_threads();
  if (threads <= 1 || M * N * K < kMinParallelMacs || in_pool_chunk()) {
    piece(out, a, b, accumulate, bias);
    return;
  }
  // Split the side with more aligned groups, so that the threads' shares come out even (an
  // [80, 224] output is 10 groups of rows but 5 panels of columns); columns when b needs packing
  // (gemm_f32 packs the panels of a piece's columns: a split of rows would pack all of b twice).
  // Each thread claims groups (thread_pool.h). Every element is computed the same way whatever
  // the split, so the results do not depend on it.
  const bool own = own_gemm_takes(out, a, b, bias);
  const int64_t row_align = own ? kAlignOwnRows : kAlign, col_align = own ? kAlignOwnColumns : kAlign;
  const int64_t row_groups = (M + row_align - 1) / row_align, col_groups = (N + col_align - 1) / col_align;
  const bool packs_b = own && b.stride(1) != 1;
  const bool by_rows = packs_b ? M >= N : row_groups >= col_groups;
  const int64_t len = by_rows ? M : N;
  const int64_t align = by_rows ? row_align : col_align;
  const int64_t groups = by_rows ? row_groups : col_groups;
  const int64_t grain = std::max<int64_t>(1, groups / (2 * threads));
  parallel_for(groups, grain, [&](int64_t g0, int64_t g1) {
    const int64_t begin = g0 * align, size = std::min(len, g1 * align) - begin;
    at::Tensor o = out.narrow(by_rows ? 0 : 1, begin, size);
    if (by_rows) {
      piece(o, a.narrow(0, begin, size), b, accumulate, bias);
    } else {
      piece(o, a, b.narrow(1, begin, size), accumulate, bias.defined() ? bias.narrow(0, begin, size) : bias);
    }
  });
}

}  // namespace cpu
}  // namespace gru4rec
