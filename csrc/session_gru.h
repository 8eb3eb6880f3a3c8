// Host side of gru4rec::session_gru_forward/backward shared by the CPU and CUDA backends:
// the argument checks (defined in session_gru.cpp) and the loop over time steps, which does the
// products through ATen (BLAS / cuBLAS) and calls the backend's fused elementwise kernels.
//
// The workspace (r, z, n or c, and hn or r*h per step and unit) is kept in
// workspace_dtype(model dtype): float32 for a bfloat16 model, so that the backward's (1 - z) and
// (1 - n^2) of saturated gates keep their digits; the kernels compute in that type too.
//
// A backend is a struct `K` with static functions taking the step structs below:
//   K::forward_cudnn(FwdStep), K::forward_gru4rec_gates(FwdStep), K::forward_gru4rec_cand(FwdStep),
//   K::backward_cudnn(BwdStep), K::backward_gru4rec_cand(BwdStep), K::backward_gru4rec_gates(BwdStep),
//   K::zero_reset_rows(Tensor x [B,H], const bool* reset [B]), K::check_ids(Tensor ids, int64_t N),
//   K::bias_grads(dgi, dgh, cudnn, has_b_ih, has_b_hh) -> (grad_b_ih, grad_b_hh) (bias_grads_aten's rule).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "products.h"

#include <optional>
#include <tuple>
#include <utility>

namespace gru4rec {

using at::Tensor;

// The bias gradients through ATen (the CPU backend's): row sums of the gate gradients dgi and dgh
// [T*B, 3H]; for the gru4rec cell (dgh is dgi) both biases get the same sums. An absent bias gets
// an empty tensor.
inline std::pair<Tensor, Tensor> bias_grads_aten(const Tensor& dgi, const Tensor& dgh, bool cudnn,
                                                 bool has_b_ih, bool has_b_hh) {
  const auto opts = dgi.options();
  Tensor grad_b_ih = has_b_ih ? dgi.sum(0) : at::empty({0}, opts);
  Tensor grad_b_hh = !has_b_hh               ? at::empty({0}, opts)
                     : (!cudnn && has_b_ih) ? grad_b_ih.clone()
                                            : dgh.sum(0);
  return {grad_b_ih, grad_b_hh};
}

enum Variant : int64_t { kCudnn = 0, kGru4rec = 1 };

// The dtype of the workspace of a model of dtype `dtype` (its accumulation type).
inline at::ScalarType workspace_dtype(at::ScalarType dtype) { return at::toOpMathType(dtype); }

// Sizes of one call: T steps, B rows, E input features (N items for id input), H hidden units.
struct GruDims {
  int64_t T = 0, B = 0, E = 0, H = 0, N = 0;
  bool ids = false;  // input holds int64 item ids [T,B] (one-hot input)
};

// Checks the forward's arguments (devices, dtypes, shapes, variant); throws naming the argument.
GruDims check_session_gru_forward(const Tensor& input, const Tensor& reset, const Tensor& h0,
                                  const Tensor& weight_ih, const Tensor& weight_hh,
                                  const std::optional<Tensor>& bias_ih,
                                  const std::optional<Tensor>& bias_hh, int64_t variant);

// The forward's checks plus those of the gradients and the saved forward results.
GruDims check_session_gru_backward(const Tensor& grad_output, const Tensor& grad_h_n,
                                   const Tensor& input, const Tensor& reset, const Tensor& h0,
                                   const Tensor& weight_ih, const Tensor& weight_hh,
                                   const std::optional<Tensor>& bias_ih,
                                   const std::optional<Tensor>& bias_hh, const Tensor& output,
                                   const Tensor& workspace, int64_t variant);

// One forward step. Pointers are to elements of the floating dtype `dtype` unless typed.
struct FwdStep {
  at::ScalarType dtype;
  int64_t B = 0, H = 0;
  const void* gi = nullptr;        // dense: x W_ih^T of this step [B,3H]; ids: weight_ih [3H,N]
  const int64_t* ids = nullptr;    // ids: item ids of this step [B]; dense: nullptr
  int64_t n_items = 0;             // ids: N
  const bool* reset = nullptr;     // [B] rows whose previous state counts as 0
  const void* hprev = nullptr;     // [B,H] previous state (before the reset)
  const void* gh = nullptr;        // cudnn: h W_hh^T [B,3H]; gates: h W_hh[:2H]^T [B,2H];
                                   // cand: (r*h) W_hh[2H:]^T [B,H]
  const void* b_ih = nullptr;      // [3H]
  const void* b_hh = nullptr;      // [3H]
  void* out = nullptr;             // [B,H] new state
  void* h_n = nullptr;             // [B,H] copy of the new state at the last step, else nullptr
  void* ws = nullptr;              // [B,4H] workspace of this step (workspace_dtype)
};

// One backward step (reverse time order).
struct BwdStep {
  at::ScalarType dtype;
  int64_t B = 0, H = 0;
  const void* grad_out = nullptr;   // [B,H] dL/d output[t]
  const void* grad_h_n = nullptr;   // [B,H] at the last step, else nullptr
  const bool* reset_next = nullptr; // [B] reset of step t+1 (masks carry), nullptr at the last step
  const bool* reset = nullptr;      // [B] reset of step t
  const void* hprev = nullptr;      // [B,H] previous state (before the reset)
  const void* ws = nullptr;         // [B,4H] workspace of this step (workspace_dtype)
  const void* drh = nullptr;        // gru4rec part 2: dL/d(r*h) [B,H]
  void* carry = nullptr;            // [B,H] in: dL/dh from step t+1; out: direct part of dL/dh_prev
  void* dgi = nullptr;              // [B,3H] dL/d(x W_ih^T + b_ih)
  void* dgh = nullptr;              // [B,3H] dL/d(h W_hh^T + b_hh) (cudnn; == dgi for gru4rec)
  void* hp = nullptr;               // [B,H] out: previous state after the reset
};

inline const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// Forward over T steps. Returns (output [T,B,H], h_n [B,H], workspace [T,B,4H]).
template <class K>
std::tuple<Tensor, Tensor, Tensor> session_gru_forward_impl(
    const Tensor& input_, const Tensor& reset_, const Tensor& h0_, const Tensor& weight_ih_,
    const Tensor& weight_hh_, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, int64_t variant) {
  const GruDims d = check_session_gru_forward(input_, reset_, h0_, weight_ih_, weight_hh_, bias_ih,
                                              bias_hh, variant);
  const int64_t T = d.T, B = d.B, H = d.H;
  const Tensor input = input_.contiguous(), reset = reset_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = weight_ih_.contiguous(), w_hh = weight_hh_.contiguous();
  const auto opts = w_hh.options();
  const Tensor b_ih = bias_ih.has_value() && bias_ih->defined() ? bias_ih->contiguous()
                                                                : at::zeros({3 * H}, opts);
  const Tensor b_hh = bias_hh.has_value() && bias_hh->defined() ? bias_hh->contiguous()
                                                                : at::zeros({3 * H}, opts);
  Tensor out = at::empty({T, B, H}, opts);
  Tensor h_n = at::empty({B, H}, opts);
  Tensor ws = at::empty({T, B, 4 * H}, opts.dtype(workspace_dtype(w_hh.scalar_type())));
  Tensor gi;  // dense: x W_ih^T for all steps at once [T*B,3H]
  if (d.ids) {
    K::check_ids(input, d.N);
  } else {
    gi = gru4rec::mm(input.view({T * B, d.E}), w_ih.t());
  }
  FwdStep s;
  s.dtype = opts.dtype().toScalarType();
  s.B = B;
  s.H = H;
  s.n_items = d.N;
  s.b_ih = b_ih.const_data_ptr();
  s.b_hh = b_hh.const_data_ptr();
  const int64_t esize = static_cast<int64_t>(w_hh.element_size());
  const auto at_step = [&](const Tensor& t, int64_t step, int64_t row) {
    return static_cast<const char*>(t.const_data_ptr()) + step * row * esize;
  };
  const auto at_step_mut = [&](Tensor& t, int64_t step, int64_t row) {
    return static_cast<char*>(t.mutable_data_ptr()) + step * row * t.element_size();
  };
  const bool* reset_p = reset.const_data_ptr<bool>();
  const int64_t* ids_p = d.ids ? input.const_data_ptr<int64_t>() : nullptr;
  // Points the step's fields at step t (both variants; gh is the recurrent product just computed).
  const auto set_step = [&](int64_t t, const Tensor& hprev, const Tensor& gh) {
    s.gi = d.ids ? w_ih.const_data_ptr() : at_step(gi, t, B * 3 * H);
    s.ids = d.ids ? ids_p + t * B : nullptr;
    s.reset = reset_p + t * B;
    s.hprev = hprev.const_data_ptr();
    s.gh = gh.const_data_ptr();
    s.out = at_step_mut(out, t, B * H);
    s.h_n = t == T - 1 ? h_n.mutable_data_ptr() : nullptr;
    s.ws = at_step_mut(ws, t, B * 4 * H);
  };
  if (variant == kCudnn) {
    Tensor gh = at::empty({B, 3 * H}, opts);
    const Tensor w_hh_t = w_hh.t();
    for (int64_t t = 0; t < T; ++t) {
      const Tensor hprev = t == 0 ? h0 : out.select(0, t - 1);
      gru4rec::mm_out(gh, hprev, w_hh_t);
      set_step(t, hprev, gh);
      K::forward_cudnn(s);
    }
  } else {
    Tensor gh = at::empty({B, 2 * H}, opts);
    Tensor ghc = at::empty({B, H}, opts);
    const Tensor w_rz_t = w_hh.narrow(0, 0, 2 * H).t();
    const Tensor w_c_t = w_hh.narrow(0, 2 * H, H).t();
    const Tensor rh_all = ws.view({T * B, 4 * H}).narrow(1, 3 * H, H);  // r * h of every step
    for (int64_t t = 0; t < T; ++t) {
      const Tensor hprev = t == 0 ? h0 : out.select(0, t - 1);
      gru4rec::mm_out(gh, hprev, w_rz_t);
      set_step(t, hprev, gh);
      K::forward_gru4rec_gates(s);
      const Tensor rh = T == 1 ? rh_all : rh_all.narrow(0, t * B, B);
      gru4rec::mm_out(ghc, rh.scalar_type() == w_hh.scalar_type() ? rh : rh.to(w_hh.scalar_type()),
                      w_c_t);
      s.gh = ghc.const_data_ptr();
      K::forward_gru4rec_cand(s);
    }
  }
  return {out, h_n, ws};
}

// Backward over T steps (reverse order), then the weight gradients with one product each. For id
// input, grad_weight_ih is ROW-SPARSE, [T*B, 3H]: row t*B+b is the gradient w.r.t. column
// input[t,b] of weight_ih [3H,N] (duplicate ids not summed; no dense [3H,N] buffer).
template <class K>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> session_gru_backward_impl(
    const Tensor& grad_output_, const Tensor& grad_h_n_, const Tensor& input_,
    const Tensor& reset_, const Tensor& h0_, const Tensor& weight_ih_, const Tensor& weight_hh_,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    const Tensor& output_, const Tensor& workspace_, int64_t variant, bool need_grad_input,
    bool need_grad_h0) {
  const GruDims d = check_session_gru_backward(grad_output_, grad_h_n_, input_, reset_, h0_,
                                               weight_ih_, weight_hh_, bias_ih, bias_hh, output_,
                                               workspace_, variant);
  const int64_t T = d.T, B = d.B, H = d.H;
  const Tensor go = grad_output_.contiguous(), ghn = grad_h_n_.contiguous();
  const Tensor input = input_.contiguous(), reset = reset_.contiguous(), h0 = h0_.contiguous();
  const Tensor w_ih = weight_ih_.contiguous(), w_hh = weight_hh_.contiguous();
  const Tensor out = output_.contiguous(), ws = workspace_.contiguous();
  const auto opts = w_hh.options();
  const bool cudnn = variant == kCudnn;
  if (d.ids) K::check_ids(input, d.N);
  Tensor dgi = at::empty({T * B, 3 * H}, opts);  // all steps' gradients, row t*B + b
  Tensor dgh = cudnn ? at::empty({T * B, 3 * H}, opts) : dgi;
  Tensor hp = at::empty({T * B, H}, opts);
  Tensor carry = at::empty({B, H}, opts);  // becomes grad_h0
  Tensor drh = cudnn ? Tensor() : at::empty({B, H}, opts);
  const Tensor w_rz = cudnn ? Tensor() : w_hh.narrow(0, 0, 2 * H);  // gru4rec only
  const Tensor w_c = cudnn ? Tensor() : w_hh.narrow(0, 2 * H, H);
  const int64_t esize = static_cast<int64_t>(w_hh.element_size());
  const int64_t ws_esize = static_cast<int64_t>(ws.element_size());
  const bool* reset_p = reset.const_data_ptr<bool>();
  BwdStep s;
  s.dtype = opts.dtype().toScalarType();
  s.B = B;
  s.H = H;
  s.carry = carry.mutable_data_ptr();
  s.drh = cudnn ? nullptr : drh.const_data_ptr();
  for (int64_t t = T - 1; t >= 0; --t) {
    const auto off = [&](int64_t row) { return t * row * esize; };
    s.grad_out = static_cast<const char*>(go.const_data_ptr()) + off(B * H);
    s.grad_h_n = t == T - 1 && ghn.numel() != 0 ? ghn.const_data_ptr() : nullptr;  // empty: none
    s.reset_next = t == T - 1 ? nullptr : reset_p + (t + 1) * B;
    s.reset = reset_p + t * B;
    s.hprev = t == 0 ? h0.const_data_ptr()
                     : static_cast<const char*>(out.const_data_ptr()) + (t - 1) * B * H * esize;
    s.ws = static_cast<const char*>(ws.const_data_ptr()) + t * B * 4 * H * ws_esize;
    s.dgi = static_cast<char*>(dgi.mutable_data_ptr()) + off(B * 3 * H);
    s.dgh = static_cast<char*>(dgh.mutable_data_ptr()) + off(B * 3 * H);
    s.hp = static_cast<char*>(hp.mutable_data_ptr()) + off(B * H);
    const Tensor dgh_t = T == 1 ? dgh : dgh.narrow(0, t * B, B);
    // The recurrent product of step 0 only feeds grad_h0: skipped when it is not wanted.
    const bool carry_back = t > 0 || need_grad_h0;
    if (cudnn) {
      K::backward_cudnn(s);
      if (carry_back) gru4rec::addmm_(carry, dgh_t, w_hh);
    } else {
      K::backward_gru4rec_cand(s);
      gru4rec::mm_out(drh, dgh_t.narrow(1, 2 * H, H), w_c);
      K::backward_gru4rec_gates(s);
      if (carry_back) gru4rec::addmm_(carry, dgh_t.narrow(1, 0, 2 * H), w_rz);
    }
  }
  if (need_grad_h0) {
    K::zero_reset_rows(carry, reset_p);  // the first step's reset rows get no gradient
  } else {
    carry = at::empty({0}, opts);
  }
  const Tensor& dgi2 = dgi;
  const Tensor& dgh2 = dgh;
  const Tensor& hp2 = hp;
  Tensor grad_w_hh;
  if (cudnn) {
    grad_w_hh = gru4rec::mm(dgh2.t(), hp2);
  } else {
    grad_w_hh = at::empty({3 * H, H}, opts);
    Tensor g_rz = grad_w_hh.narrow(0, 0, 2 * H), g_c = grad_w_hh.narrow(0, 2 * H, H);
    gru4rec::mm_out(g_rz, dgh2.narrow(1, 0, 2 * H).t(), hp2);
    const Tensor rh = ws.view({T * B, 4 * H}).narrow(1, 3 * H, H);  // r * h of every step
    gru4rec::mm_out(g_c, dgh2.narrow(1, 2 * H, H).t(),
                    rh.scalar_type() == w_hh.scalar_type() ? rh : rh.to(w_hh.scalar_type()));
  }
  Tensor grad_input, grad_w_ih;
  if (d.ids) {
    grad_input = at::empty({0}, opts);
    grad_w_ih = dgi2;  // row-sparse: the gate gradients of the rows, belonging to their ids
  } else {
    const Tensor x2 = input.view({T * B, d.E});
    grad_input = need_grad_input ? gru4rec::mm(dgi2, w_ih).view({T, B, d.E}) : at::empty({0}, opts);
    grad_w_ih = gru4rec::mm(dgi2.t(), x2);
  }
  const bool has_b_ih = bias_ih.has_value() && bias_ih->defined();
  const bool has_b_hh = bias_hh.has_value() && bias_hh->defined();
  auto [grad_b_ih, grad_b_hh] = K::bias_grads(dgi2, dgh2, cudnn, has_b_ih, has_b_hh);
  return {grad_input, carry, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

}  // namespace gru4rec
