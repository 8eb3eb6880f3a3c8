// CPU kernels of gru4rec::session_gru_forward/backward: one fused elementwise pass per step
// (parallel over rows, vectorised over hidden units); products go through ATen (BLAS).
// float32, float64 and bfloat16; arithmetic and the workspace in at::opmath_type<scalar_t>
// (float for bfloat16), as in the CUDA kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

// Our code below may speculate float ops (GCC's default -ftrapping-math forbids it), which lets the
// gate loops with their branch-free selects vectorise. FP exceptions are not trapped in torch.
#pragma GCC optimize("no-trapping-math")

#include "cpu/cpu_isa.h"
#include "cpu/thread_pool.h"
#include "gru_math.h"
#include "session_gru.h"

namespace gru4rec {
namespace {

// Rows per parallel chunk: below about 16k elements per call the work stays on one thread.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, H)); }

// Runs rows(b0, b1) over [0, B) in parallel chunks.
template <class F>
void parallel_rows(int64_t B, int64_t H, const F& rows) {
  cpu::parallel_for(B, row_grain(H), [&](int64_t b0, int64_t b1) { run_best(rows, b0, b1); });
}

// Zeros that reset rows read in place of their previous state and recurrent product: a pointer
// switch per row keeps the inner loops free of branches, so they vectorise.
template <typename scalar_t>
std::vector<scalar_t> zero_row(int64_t H) { return std::vector<scalar_t>(3 * H, scalar_t(0)); }

template <typename scalar_t>
const scalar_t* cp(const void* p) { return static_cast<const scalar_t*>(p); }
template <typename scalar_t>
scalar_t* mp(void* p) { return static_cast<scalar_t*>(p); }

// Input part of gate unit g (0..3H) of row b: dense rows [B,3H], or column ids[b] of weight_ih [3H,N].
template <typename scalar_t, bool kIds>
inline const scalar_t* gi_row(const FwdStep& s, int64_t b, int64_t& stride) {
  if constexpr (kIds) {
    stride = s.n_items;
    return cp<scalar_t>(s.gi) + s.ids[b];
  } else {
    stride = 1;
    return cp<scalar_t>(s.gi) + b * 3 * s.H;
  }
}

// cudnn forward step: gi [B,3H] or weight_ih [3H,N]+ids [B], gh [B,3H], hprev [B,H] -> out/h_n [B,H], ws [B,4H].
template <typename scalar_t, bool kIds>
void forward_cudnn_kernel(const FwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const std::vector<scalar_t> zeros = zero_row<scalar_t>(H);
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t st;
      const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
      const bool keep = !s.reset[b];
      const scalar_t* gh = keep ? cp<scalar_t>(s.gh) + b * 3 * H : zeros.data();
      const scalar_t* hprev = keep ? cp<scalar_t>(s.hprev) + b * H : zeros.data();
      scalar_t* out = mp<scalar_t>(s.out) + b * H;
      acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t hp = acc_t(hprev[j]);
        const acc_t gr = acc_t(gh[j]);
        const acc_t gz = acc_t(gh[H + j]);
        const acc_t gn = acc_t(gh[2 * H + j]);
        const acc_t a_r = acc_t(gi[j * st]) + acc_t(bi[j]) + gr + acc_t(bh[j]);
        const acc_t a_z = acc_t(gi[(H + j) * st]) + acc_t(bi[H + j]) + gz + acc_t(bh[H + j]);
        const acc_t a_n = acc_t(gi[(2 * H + j) * st]) + acc_t(bi[2 * H + j]);
        const acc_t hn = gn + acc_t(bh[2 * H + j]);
        acc_t r, z, n, h;
        cudnn_forward(a_r, a_z, a_n, hn, hp, r, z, n, h);
        out[j] = scalar_t(h);
        ws[j] = r;
        ws[H + j] = z;
        ws[2 * H + j] = n;
        ws[3 * H + j] = hn;
      }
      if (s.h_n != nullptr) std::copy(out, out + H, mp<scalar_t>(s.h_n) + b * H);
    }
  });
}

// gru4rec gates step: gi as above, gh [B,2H] = h W_hh[:2H]^T -> ws [B,4H] r, z and r*h.
template <typename scalar_t, bool kIds>
void forward_gru4rec_gates_kernel(const FwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const std::vector<scalar_t> zeros = zero_row<scalar_t>(H);
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t st;
      const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
      const bool keep = !s.reset[b];
      const scalar_t* gh = keep ? cp<scalar_t>(s.gh) + b * 2 * H : zeros.data();
      const scalar_t* hprev = keep ? cp<scalar_t>(s.hprev) + b * H : zeros.data();
      acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t hp = acc_t(hprev[j]);
        const acc_t gr = acc_t(gh[j]);
        const acc_t gz = acc_t(gh[H + j]);
        const acc_t a_r = acc_t(gi[j * st]) + acc_t(bi[j]) + gr + acc_t(bh[j]);
        const acc_t a_z = acc_t(gi[(H + j) * st]) + acc_t(bi[H + j]) + gz + acc_t(bh[H + j]);
        acc_t r, z, rh;
        gru4rec_gates(a_r, a_z, hp, r, z, rh);
        ws[j] = r;
        ws[H + j] = z;
        ws[3 * H + j] = rh;
      }
    }
  });
}

// gru4rec candidate step: gi as above, gh [B,H] = (r*h) W_hh[2H:]^T, ws z -> out/h_n [B,H], ws c.
template <typename scalar_t, bool kIds>
void forward_gru4rec_cand_kernel(const FwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const std::vector<scalar_t> zeros = zero_row<scalar_t>(H);
  const scalar_t* bi = cp<scalar_t>(s.b_ih);
  const scalar_t* bh = cp<scalar_t>(s.b_hh);
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t st;
      const scalar_t* gi = gi_row<scalar_t, kIds>(s, b, st);
      const scalar_t* gh = cp<scalar_t>(s.gh) + b * H;  // (r*h) is already 0 for reset rows
      const scalar_t* hprev = !s.reset[b] ? cp<scalar_t>(s.hprev) + b * H : zeros.data();
      scalar_t* out = mp<scalar_t>(s.out) + b * H;
      acc_t* ws = mp<acc_t>(s.ws) + b * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t hp = acc_t(hprev[j]);
        const acc_t a_c = acc_t(gi[(2 * H + j) * st]) + acc_t(bi[2 * H + j]) + acc_t(gh[j]) +
                          acc_t(bh[2 * H + j]);
        acc_t c, h;
        gru4rec_candidate(a_c, ws[H + j], hp, c, h);
        out[j] = scalar_t(h);
        ws[2 * H + j] = c;
      }
      if (s.h_n != nullptr) std::copy(out, out + H, mp<scalar_t>(s.h_n) + b * H);
    }
  });
}

// dL/dh' of row b, unit j: grad_out + (grad_h_n at the last step | carry unless step t+1 reset it).
template <typename scalar_t>
struct GradIn {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* go;
  const scalar_t* extra;  // grad_h_n row, carry row, or zeros
  inline acc_t operator()(int64_t j) const { return acc_t(go[j]) + acc_t(extra[j]); }
};

template <typename scalar_t>
GradIn<scalar_t> grad_in(const BwdStep& s, int64_t b, const scalar_t* zeros) {
  const int64_t H = s.H;
  GradIn<scalar_t> g;
  g.go = cp<scalar_t>(s.grad_out) + b * H;
  if (s.reset_next == nullptr) {
    g.extra = s.grad_h_n != nullptr ? cp<scalar_t>(s.grad_h_n) + b * H : zeros;
  } else {
    g.extra = !s.reset_next[b] ? cp<scalar_t>(s.carry) + b * H : zeros;
  }
  return g;
}

// cudnn backward step: grad_out/carry [B,H], ws [B,4H], hprev [B,H] -> dgi, dgh [B,3H], hp, carry [B,H].
template <typename scalar_t>
void backward_cudnn_kernel(const BwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const std::vector<scalar_t> zeros = zero_row<scalar_t>(H);
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      const GradIn<scalar_t> gin = grad_in<scalar_t>(s, b, zeros.data());
      const acc_t* ws = cp<acc_t>(s.ws) + b * 4 * H;
      const scalar_t* hprev = !s.reset[b] ? cp<scalar_t>(s.hprev) + b * H : zeros.data();
      scalar_t* carry = mp<scalar_t>(s.carry) + b * H;
      scalar_t* dgi = mp<scalar_t>(s.dgi) + b * 3 * H;
      scalar_t* dgh = mp<scalar_t>(s.dgh) + b * 3 * H;
      scalar_t* hpo = mp<scalar_t>(s.hp) + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t dh = gin(j);
        const acc_t hp = acc_t(hprev[j]);
        acc_t da_r, da_z, da_n, dhn, dh_direct;
        cudnn_backward(dh, ws[j], ws[H + j], ws[2 * H + j], ws[3 * H + j], hp, da_r, da_z, da_n,
                       dhn, dh_direct);
        dgi[j] = scalar_t(da_r);
        dgi[H + j] = scalar_t(da_z);
        dgi[2 * H + j] = scalar_t(da_n);
        dgh[j] = scalar_t(da_r);
        dgh[H + j] = scalar_t(da_z);
        dgh[2 * H + j] = scalar_t(dhn);
        hpo[j] = hprev[j];
        carry[j] = scalar_t(dh_direct);
      }
    }
  });
}

// gru4rec backward, part 1: grad_out/carry, ws z, c, hprev -> dgi [B,3H] z and c blocks, hp, carry.
template <typename scalar_t>
void backward_gru4rec_cand_kernel(const BwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  const std::vector<scalar_t> zeros = zero_row<scalar_t>(H);
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      const GradIn<scalar_t> gin = grad_in<scalar_t>(s, b, zeros.data());
      const acc_t* ws = cp<acc_t>(s.ws) + b * 4 * H;
      const scalar_t* hprev = !s.reset[b] ? cp<scalar_t>(s.hprev) + b * H : zeros.data();
      scalar_t* carry = mp<scalar_t>(s.carry) + b * H;
      scalar_t* dg = mp<scalar_t>(s.dgi) + b * 3 * H;
      scalar_t* hpo = mp<scalar_t>(s.hp) + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const acc_t dh = gin(j);
        const acc_t hp = acc_t(hprev[j]);
        acc_t da_z, da_c, dh_direct;
        gru4rec_backward_cand(dh, ws[H + j], ws[2 * H + j], hp, da_z, da_c, dh_direct);
        dg[H + j] = scalar_t(da_z);
        dg[2 * H + j] = scalar_t(da_c);
        hpo[j] = hprev[j];
        carry[j] = scalar_t(dh_direct);
      }
    }
  });
}

// gru4rec backward, part 2: drh [B,H] = da_c U_c, ws r, hp -> dgi [B,3H] r block, carry += drh * r.
template <typename scalar_t>
void backward_gru4rec_gates_kernel(const BwdStep& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = s.H;
  parallel_rows(s.B, H, [&](int64_t b0, int64_t b1) GRU4REC_ROWS_INLINE {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* drh = cp<scalar_t>(s.drh) + b * H;
      const acc_t* ws = cp<acc_t>(s.ws) + b * 4 * H;
      const scalar_t* hp = cp<scalar_t>(s.hp) + b * H;
      scalar_t* carry = mp<scalar_t>(s.carry) + b * H;
      scalar_t* dg = mp<scalar_t>(s.dgi) + b * 3 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        acc_t da_r, dh_rh;
        gru4rec_backward_gates(acc_t(drh[j]), ws[j], acc_t(hp[j]), da_r, dh_rh);
        dg[j] = scalar_t(da_r);
        carry[j] = scalar_t(acc_t(carry[j]) + dh_rh);
      }
    }
  });
}

#define GRU4REC_CPU_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <template <typename, bool> class F>
void dispatch_fwd(const FwdStep& s) {
  GRU4REC_CPU_DISPATCH(s.dtype, "session_gru_forward", [&] {
    if (s.ids != nullptr) {
      F<scalar_t, true>::run(s);
    } else {
      F<scalar_t, false>::run(s);
    }
  });
}

template <typename scalar_t, bool kIds>
struct FwdCudnn { static void run(const FwdStep& s) { forward_cudnn_kernel<scalar_t, kIds>(s); } };
template <typename scalar_t, bool kIds>
struct FwdGates {
  static void run(const FwdStep& s) { forward_gru4rec_gates_kernel<scalar_t, kIds>(s); }
};
template <typename scalar_t, bool kIds>
struct FwdCand {
  static void run(const FwdStep& s) { forward_gru4rec_cand_kernel<scalar_t, kIds>(s); }
};

struct CpuKernels {
  static void forward_cudnn(const FwdStep& s) { dispatch_fwd<FwdCudnn>(s); }
  static void forward_gru4rec_gates(const FwdStep& s) {
    dispatch_fwd<FwdGates>(s);
  }
  static void forward_gru4rec_cand(const FwdStep& s) {
    dispatch_fwd<FwdCand>(s);
  }
  static void backward_cudnn(const BwdStep& s) {
    GRU4REC_CPU_DISPATCH(s.dtype, "session_gru_backward",
                               [&] { backward_cudnn_kernel<scalar_t>(s); });
  }
  static void backward_gru4rec_cand(const BwdStep& s) {
    GRU4REC_CPU_DISPATCH(s.dtype, "session_gru_backward",
                               [&] { backward_gru4rec_cand_kernel<scalar_t>(s); });
  }
  static void backward_gru4rec_gates(const BwdStep& s) {
    GRU4REC_CPU_DISPATCH(s.dtype, "session_gru_backward",
                               [&] { backward_gru4rec_gates_kernel<scalar_t>(s); });
  }

  static std::pair<Tensor, Tensor> bias_grads(const Tensor& dgi, const Tensor& dgh, bool cudnn,
                                              bool has_b_ih, bool has_b_hh) {
    return bias_grads_aten(dgi, dgh, cudnn, has_b_ih, has_b_hh);
  }

  // Zeroes the rows of x [B,H] where reset [B] is true.
  static void zero_reset_rows(Tensor& x, const bool* r) {
    const int64_t B = x.size(0), H = x.size(1);
    GRU4REC_CPU_DISPATCH(x.scalar_type(), "session_gru_backward", [&] {
      scalar_t* p = x.mutable_data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        if (r[b]) std::fill(p + b * H, p + (b + 1) * H, scalar_t(0));
      }
    });
  }

  // Every id of ids (int64, contiguous) must be in [0, N).
  static void check_ids(const Tensor& ids, int64_t N) {
    const int64_t* p = ids.const_data_ptr<int64_t>();
    const int64_t n = ids.numel();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(p[i] >= 0 && p[i] < N, "session_gru: input item id ", p[i], " at flat position ",
                  i, " is out of range [0, ", N, ") (N = weight_ih.size(1))");
    }
  }
};

std::tuple<Tensor, Tensor, Tensor> forward_cpu(const Tensor& input, const Tensor& reset,
                                               const Tensor& h0, const Tensor& weight_ih,
                                               const Tensor& weight_hh,
                                               const std::optional<Tensor>& bias_ih,
                                               const std::optional<Tensor>& bias_hh,
                                               int64_t variant) {
  return session_gru_forward_impl<CpuKernels>(input, reset, h0, weight_ih, weight_hh, bias_ih,
                                              bias_hh, variant);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& reset,
    const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const Tensor& output, const Tensor& workspace, int64_t variant, bool need_grad_input,
    bool need_grad_h0) {
  return session_gru_backward_impl<CpuKernels>(grad_output, grad_h_n, input, reset, h0, weight_ih,
                                               weight_hh, bias_ih, bias_hh, output, workspace,
                                               variant, need_grad_input, need_grad_h0);
}

}  // namespace
}  // namespace gru4rec

TORCH_LIBRARY_IMPL(gru4rec, CPU, m) {
  m.impl("session_gru_forward", &gru4rec::forward_cpu);
  m.impl("session_gru_backward", &gru4rec::backward_cpu);
}
