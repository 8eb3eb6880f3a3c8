// Autograd of the gru4rec ops from C++ (LibTorch), through libgru4rec_ops.so (CMakeLists.txt):
// forward and backward of gru4rec::session_gru (both GRU variants) and of
// gru4rec::sampled_ranking_loss, each checked against central finite differences in float64 at a
// few weight entries, and the clear error of a double backward. Exit status 0 when all hold.
//
//   cmake --build build && build/session_gru_autograd
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The differentiable ops, called through the dispatcher (libgru4rec_ops.so registers them when it
// is loaded; their Autograd kernels record the graph).
std::tuple<Tensor, Tensor> session_gru(const Tensor& input, const Tensor& reset, const Tensor& h0,
                                       const Tensor& weight_ih, const Tensor& weight_hh,
                                       const OptTensor& bias_ih, const OptTensor& bias_hh,
                                       int64_t variant) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gru4rec::session_gru", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&, int64_t)>();
  return op.call(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh, variant);
}

Tensor sampled_ranking_loss(const Tensor& hidden, const Tensor& weight, const Tensor& bias,
                            const Tensor& targets, const Tensor& samples, int64_t loss,
                            bool sparse_grad = false) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("gru4rec::sampled_ranking_loss", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const OptTensor&, const OptTensor&, int64_t, int64_t, double, double,
                        double, bool, bool)>();
  return op.call(hidden, weight, bias, targets, samples, std::nullopt, std::nullopt, loss,
                 /*activation=*/1, /*elu_alpha=*/1.0, /*bpreg=*/0.5, /*logq=*/0.0,
                 /*mask_hits=*/true, sparse_grad);
}

int failures = 0;

// Compares the autograd gradient of `loss_of()` w.r.t. param[row, col] with a central difference.
template <class LossFn>
void check_entry(const char* what, const Tensor& param, const Tensor& grad, int64_t row,
                 int64_t col, LossFn loss_of) {
  const double eps = 1e-6;
  torch::NoGradGuard no_grad;
  auto entry = param.select(0, row).select(0, col);
  const double saved = entry.item<double>();
  entry.fill_(saved + eps);
  const double up = loss_of().template item<double>();
  entry.fill_(saved - eps);
  const double down = loss_of().template item<double>();
  entry.fill_(saved);
  const double numeric = (up - down) / (2 * eps);
  const double analytic = grad.select(0, row).select(0, col).item<double>();
  const bool ok = std::abs(numeric - analytic) <= 1e-6 * std::max(1.0, std::abs(numeric));
  std::printf("%-38s [%lld,%lld]  autograd %+.10f  finite diff %+.10f  %s\n", what,
              static_cast<long long>(row), static_cast<long long>(col), analytic, numeric,
              ok ? "ok" : "MISMATCH");
  failures += !ok;
}

void check_session_gru(int64_t variant) {
  const int64_t T = 3, B = 4, E = 5, H = 6;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Tensor x = torch::randn({T, B, E}, f64);
  Tensor reset = torch::zeros({T, B}, torch::kBool);
  reset.index_put_({1, 2}, true);  // row 2's session restarts at step 1
  Tensor h0 = torch::randn({B, H}, f64).requires_grad_();
  Tensor w_ih = (torch::randn({3 * H, E}, f64) / std::sqrt(double(E))).requires_grad_();
  Tensor w_hh = (torch::randn({3 * H, H}, f64) / std::sqrt(double(H))).requires_grad_();
  Tensor b_ih = (0.1 * torch::randn({3 * H}, f64)).requires_grad_();
  Tensor b_hh = (0.1 * torch::randn({3 * H}, f64)).requires_grad_();
  const Tensor g_out = torch::randn({T, B, H}, f64), g_h_n = torch::randn({B, H}, f64);
  auto loss_of = [&] {
    auto [out, h_n] = session_gru(x, reset, h0, w_ih, w_hh, b_ih, b_hh, variant);
    return (out * g_out).sum() + (h_n * g_h_n).sum();
  };
  loss_of().backward();
  const std::string name = std::string("session_gru ") + (variant == 0 ? "cudnn" : "gru4rec");
  check_entry((name + " d/d weight_hh").c_str(), w_hh, w_hh.grad(), 2 * H + 1, 3, loss_of);
  check_entry((name + " d/d weight_ih").c_str(), w_ih, w_ih.grad(), H + 4, 0, loss_of);
  check_entry((name + " d/d h0").c_str(), h0, h0.grad(), 1, 5, loss_of);
  // Item ids as input (one-hot): the dense [3H, N] weight_ih gradient, ids repeated.
  const int64_t N = 7;
  Tensor ids = torch::randint(0, N, {T, B}, torch::kLong);
  ids.index_put_({0, 0}, 3);
  ids.index_put_({2, 1}, 3);
  Tensor w_ids = (torch::randn({3 * H, N}, f64) / 2).requires_grad_();
  auto id_loss_of = [&] {
    auto [out, h_n] = session_gru(ids, reset, h0, w_ids, w_hh, b_ih, b_hh, variant);
    return (out * g_out).sum();
  };
  id_loss_of().backward();
  check_entry((name + " ids d/d weight_ih").c_str(), w_ids, w_ids.grad(), H + 2, 3, id_loss_of);
}

void check_sampled_ranking_loss() {
  const int64_t B = 5, K = 9, H = 4, N = 12;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Tensor hidden = torch::randn({B, H}, f64).requires_grad_();
  Tensor weight = (torch::randn({N, H}, f64) / 2).requires_grad_();
  Tensor bias = (0.1 * torch::randn({N}, f64)).requires_grad_();
  Tensor targets = torch::randint(0, N, {B}, torch::kLong);
  Tensor samples = torch::randint(0, N, {K}, torch::kLong);
  samples.index_put_({0}, targets[1]);  // a sample that is also a target: summed gradient rows
  auto loss_of = [&] { return sampled_ranking_loss(hidden, weight, bias, targets, samples, 2); };
  loss_of().backward();
  const int64_t item = targets[1].item<int64_t>();
  check_entry("sampled_ranking_loss d/d weight", weight, weight.grad(), item, 2, loss_of);
  check_entry("sampled_ranking_loss d/d hidden", hidden, hidden.grad(), 3, 1, loss_of);
  // sparse_grad: the same weight gradient as a sparse COO tensor (one row per candidate).
  Tensor w2 = weight.detach().clone().requires_grad_();
  sampled_ranking_loss(hidden.detach(), w2, bias.detach(), targets, samples, 2, true).backward();
  const bool same = w2.grad().is_sparse() && torch::allclose(w2.grad().to_dense(), weight.grad());
  std::printf("%-38s sparse COO, equals the dense gradient  %s\n", "sampled_ranking_loss sparse_grad",
              same ? "ok" : "FAILED");
  if (!same) ++failures;
}

void check_double_backward_raises() {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Tensor x = torch::randn({1, 2, 3}, f64);
  Tensor reset = torch::zeros({1, 2}, torch::kBool);
  Tensor h0 = torch::zeros({2, 3}, f64);
  Tensor w_ih = torch::randn({9, 3}, f64).requires_grad_();
  Tensor w_hh = torch::randn({9, 3}, f64).requires_grad_();
  auto [out, h_n] = session_gru(x, reset, h0, w_ih, w_hh, std::nullopt, std::nullopt, 0);
  auto grads = torch::autograd::grad({out.pow(2).sum()}, {w_hh}, {}, /*retain_graph=*/true,
                                     /*create_graph=*/true);
  try {
    grads[0].sum().backward();
  } catch (const c10::Error& e) {
    const bool clear = std::string(e.what()).find("double backward") != std::string::npos;
    std::printf("%-38s %s\n", "session_gru double backward", clear ? "raises (ok)" : "unclear error");
    failures += !clear;
    return;
  }
  std::printf("%-38s did not raise\n", "session_gru double backward");
  ++failures;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  check_session_gru(0);
  check_session_gru(1);
  check_sampled_ranking_loss();
  check_double_backward_raises();
  std::printf("%s\n", failures == 0 ? "all gradient checks passed" : "GRADIENT CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
