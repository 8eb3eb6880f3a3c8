// Schema of gru4rec::session_gru_forward/backward and the argument checks both backends share.
#include <torch/library.h>

#include <sstream>

#include "session_gru.h"

namespace gru4rec {
namespace {

std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void check_same_device(const Tensor& t, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "session_gru: ", name, " is on ", t.device(),
              " but weight_hh is on ", ref.device(), "; all tensors must be on one device");
}

void check_float_dtype(const Tensor& t, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "session_gru: ", name, " has dtype ",
              t.scalar_type(), " but weight_hh has dtype ", ref.scalar_type(),
              "; input (if float), h0, weights and biases must share one dtype");
}

void check_bias(const std::optional<Tensor>& bias, const char* name, const Tensor& w_hh,
                int64_t H) {
  if (!bias.has_value() || !bias->defined()) return;
  check_same_device(*bias, name, w_hh);
  check_float_dtype(*bias, name, w_hh);
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 3 * H, "session_gru: ", name,
              " must have shape [3*H] = [", 3 * H, "], got ", shape_str(*bias));
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef want, const char* what) {
  TORCH_CHECK(t.sizes() == want, "session_gru: ", name, " must have shape ", what, " = ", want,
              ", got ", shape_str(t));
}

}  // namespace

GruDims check_session_gru_forward(const Tensor& input, const Tensor& reset, const Tensor& h0,
                                  const Tensor& weight_ih, const Tensor& weight_hh,
                                  const std::optional<Tensor>& bias_ih,
                                  const std::optional<Tensor>& bias_hh, int64_t variant) {
  TORCH_CHECK(variant == kCudnn || variant == kGru4rec,
              "session_gru: variant must be 0 (cudnn) or 1 (gru4rec), got ", variant);
  // Devices first: everything follows weight_hh.
  check_same_device(input, "input", weight_hh);
  check_same_device(reset, "reset", weight_hh);
  check_same_device(h0, "h0", weight_hh);
  check_same_device(weight_ih, "weight_ih", weight_hh);
  // Dtypes.
  const auto dtype = weight_hh.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "session_gru: weight_hh has dtype ", dtype, "; the kernels support float32, "
              "float64 and bfloat16 (not half or float8): convert the model");
  GruDims d;
  d.ids = input.scalar_type() == at::kLong;
  TORCH_CHECK(d.ids || at::isFloatingType(input.scalar_type()),
              "session_gru: input must be float embeddings [T,B,E] or int64 item ids [T,B], got "
              "dtype ", input.scalar_type());
  if (!d.ids) check_float_dtype(input, "input", weight_hh);
  check_float_dtype(h0, "h0", weight_hh);
  check_float_dtype(weight_ih, "weight_ih", weight_hh);
  TORCH_CHECK(reset.scalar_type() == at::kBool, "session_gru: reset must be a bool tensor [T,B], "
              "got dtype ", reset.scalar_type());
  // Shapes.
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 3 * weight_hh.size(1) &&
                  weight_hh.size(1) > 0,
              "session_gru: weight_hh must have shape [3*H, H] with H >= 1, got ",
              shape_str(weight_hh));
  d.H = weight_hh.size(1);
  if (d.ids) {
    TORCH_CHECK(input.dim() == 2, "session_gru: input of item ids must have shape [T, B], got ",
                shape_str(input));
  } else {
    TORCH_CHECK(input.dim() == 3, "session_gru: input of embeddings must have shape [T, B, E], "
                "got ", shape_str(input));
  }
  d.T = input.size(0);
  d.B = input.size(1);
  TORCH_CHECK(d.T >= 1, "session_gru: input must hold at least one step (T >= 1), got ",
              shape_str(input));
  TORCH_CHECK(weight_ih.dim() == 2 && weight_ih.size(0) == 3 * d.H,
              "session_gru: weight_ih must have shape [3*H, ", d.ids ? "N" : "E", "] with 3*H = ",
              3 * d.H, ", got ", shape_str(weight_ih));
  if (d.ids) {
    d.N = weight_ih.size(1);
    TORCH_CHECK(d.N >= 1, "session_gru: weight_ih must have at least one item column, got ",
                shape_str(weight_ih));
  } else {
    d.E = input.size(2);
    TORCH_CHECK(weight_ih.size(1) == d.E, "session_gru: weight_ih has ", weight_ih.size(1),
                " columns but input has E = ", d.E, " features");
  }
  check_shape(h0, "h0", {d.B, d.H}, "[B, H]");
  check_shape(reset, "reset", {d.T, d.B}, "[T, B]");
  check_bias(bias_ih, "bias_ih", weight_hh, d.H);
  check_bias(bias_hh, "bias_hh", weight_hh, d.H);
  return d;
}

GruDims check_session_gru_backward(const Tensor& grad_output, const Tensor& grad_h_n,
                                   const Tensor& input, const Tensor& reset, const Tensor& h0,
                                   const Tensor& weight_ih, const Tensor& weight_hh,
                                   const std::optional<Tensor>& bias_ih,
                                   const std::optional<Tensor>& bias_hh, const Tensor& output,
                                   const Tensor& workspace, int64_t variant) {
  const GruDims d = check_session_gru_forward(input, reset, h0, weight_ih, weight_hh, bias_ih,
                                              bias_hh, variant);
  const std::pair<const Tensor*, const char*> saved[] = {
      {&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&output, "output"},
      {&workspace, "workspace"}};
  for (const auto& [t, name] : saved) {
    check_same_device(*t, name, weight_hh);
    if (t != &workspace) check_float_dtype(*t, name, weight_hh);
  }
  const auto ws_dtype = workspace_dtype(weight_hh.scalar_type());
  TORCH_CHECK(workspace.scalar_type() == ws_dtype, "session_gru: workspace has dtype ",
              workspace.scalar_type(), " but must be ", ws_dtype, " (the forward's workspace for ",
              "weight_hh of dtype ", weight_hh.scalar_type(), ")");
  check_shape(grad_output, "grad_output", {d.T, d.B, d.H}, "[T, B, H]");
  if (grad_h_n.numel() != 0) check_shape(grad_h_n, "grad_h_n", {d.B, d.H}, "[B, H]");  // empty: none
  check_shape(output, "output", {d.T, d.B, d.H}, "[T, B, H]");
  check_shape(workspace, "workspace", {d.T, d.B, 4 * d.H}, "[T, B, 4*H]");
  return d;
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // GRU over T steps of a session-parallel batch (SPEC section 3); variant 0 = cudnn, 1 = gru4rec.
  // input: float [T,B,E] or int64 item ids [T,B]; reset bool [T,B]; h0 [B,H]; nn.GRU weight layout.
  // workspace [T,B,4H]: per step r, z, n (or c), and W_hn h + b_hn (cudnn) or r * h (gru4rec),
  // in float32 for a bfloat16 model (the accumulation type).
  m.def(
      "session_gru_forward(Tensor input, Tensor reset, Tensor h0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, int variant) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  // grad_h_n [B,H], or an empty tensor when no gradient flows into h_n (the trainer's step: no
  // zero fill). grad_input is an empty tensor for id input or need_grad_input=False; grad_h0 is empty for
  // need_grad_h0=False (its product is skipped: GRU4Rec training detaches h0); grad_bias_* are
  // empty tensors when the bias is None.
  m.def(
      "session_gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor reset, "
      "Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, "
      "Tensor output, Tensor workspace, int variant, bool need_grad_input=True, "
      "bool need_grad_h0=True) -> (Tensor grad_input, Tensor grad_h0, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, Tensor grad_bias_hh)");
}
