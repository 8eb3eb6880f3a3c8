// gru4rec_ext._C: importing it registers the gru4rec::* torch ops (TORCH_LIBRARY blocks in the
// other translation units) and exposes host-side helpers through pybind11.
#include <torch/extension.h>

#include <mutex>
#include <optional>
#include <utility>
#include <vector>
#include <stdexcept>
#include <string>

#include "cpu/activation_cpu.h"
#include "cpu/cpu_isa.h"
#include "cpu/gemm_f32.h"
#include "cpu/thread_pool.h"
#include "cpu/uniform_cpu.h"
#include "products.h"
#include "schedule.h"

namespace {

// What this binary was built with; the Python side reports it and the tests check it.
pybind11::dict build_info() {
  pybind11::dict info;
#ifdef WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["torch_version"] = TORCH_VERSION;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

// out = (out if accumulate) + (bias if given) + a @ b through the CPU products of the ops
// (csrc/products.h: split over the pool, each piece gemm_f32 or BLAS). For tests.
void cpu_mm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(out.is_cpu() && a.is_cpu() && b.is_cpu(), "_cpu_mm_out: CPU tensors only");
  TORCH_CHECK(out.dim() == 2 && a.dim() == 2 && b.dim() == 2 && a.size(0) == out.size(0) &&
                  b.size(1) == out.size(1) && a.size(1) == b.size(0),
              "_cpu_mm_out: shapes must be out [M,N], a [M,K], b [K,N]");
  gru4rec::cpu::mm_out(out, a, b, accumulate, bias.value_or(at::Tensor()));
}

// gemm_f32 itself on one thread, whatever use_own_gemm() chose (for tests; needs AVX-512F).
void own_gemm_out(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(gru4rec::cpu_has_avx512(), "_own_gemm_out: this CPU has no AVX-512F");
  TORCH_CHECK(out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat &&
                  b.scalar_type() == at::kFloat, "_own_gemm_out: float32 only");
  TORCH_CHECK(out.dim() == 2 && a.dim() == 2 && b.dim() == 2 && a.size(0) == out.size(0) &&
                  b.size(1) == out.size(1) && a.size(1) == b.size(0),
              "_own_gemm_out: shapes must be out [M,N], a [M,K], b [K,N]");
  TORCH_CHECK(out.stride(1) == 1 && (a.stride(0) == 1 || a.stride(1) == 1) &&
                  (b.stride(0) == 1 || b.stride(1) == 1),
              "_own_gemm_out: out needs unit column stride, a and b one unit stride each");
  const float* bias_ptr = nullptr;
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->stride(0) == 1 &&
                    bias->size(0) == out.size(1), "_own_gemm_out: bias must be contiguous float [N]");
    bias_ptr = bias->const_data_ptr<float>();
  }
  gru4rec::cpu::gemm_f32(out.size(0), out.size(1), a.size(1), a.const_data_ptr<float>(),
                         a.stride(0), a.stride(1), b.const_data_ptr<float>(), b.stride(0),
                         b.stride(1), out.mutable_data_ptr<float>(), out.stride(0), bias_ptr,
                         accumulate);
}

// out[b] = bias[idx[b]] + hidden[b] . weight[idx[b]] for float32 CPU tensors, each element one
// gemm_f32 call of 1x1: the same chain of multiply-adds, so the same bits, as element (b, idx[b])
// of the whole [B, N] product that gemm_f32 computes (evaluation reads the targets' scores so).
at::Tensor own_gemm_rows(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& idx) {
  TORCH_CHECK(gru4rec::cpu_has_avx512(), "_own_gemm_rows: this CPU has no AVX-512F");
  TORCH_CHECK(hidden.is_cpu() && hidden.scalar_type() == at::kFloat && hidden.dim() == 2 &&
                  weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
                  bias.scalar_type() == at::kFloat && bias.dim() == 1 &&
                  idx.scalar_type() == at::kLong && idx.dim() == 1 &&
                  idx.size(0) == hidden.size(0) && weight.size(1) == hidden.size(1) &&
                  bias.size(0) == weight.size(0),
              "_own_gemm_rows: hidden [B,H], weight [N,H], bias [N] float32, idx int64 [B]");
  const at::Tensor h = hidden.contiguous(), w = weight.contiguous(), bs = bias.contiguous();
  const at::Tensor ix = idx.contiguous();
  const int64_t B = h.size(0), H = h.size(1), N = w.size(0);
  at::Tensor out = at::empty({B}, h.options());
  const int64_t* id = ix.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(id[b] >= 0 && id[b] < N, "_own_gemm_rows: idx[", b, "] = ", id[b], " is out of range");
    gru4rec::cpu::gemm_f32(1, 1, H, h.const_data_ptr<float>() + b * H, H, 1,
                           w.const_data_ptr<float>() + id[b] * H, 1, H,
                           out.mutable_data_ptr<float>() + b, 1, bs.const_data_ptr<float>() + id[b], false);
  }
  return out;
}

// In place tanh/elu (loss_math codes 1/2) of a float32 CPU score matrix [B, N] with unit column
// stride; false when this CPU has no AVX2 (the caller then uses torch's).
bool activate_rows(at::Tensor scores, int64_t activation, double alpha) {
  TORCH_CHECK(scores.is_cpu() && scores.scalar_type() == at::kFloat && scores.dim() == 2 &&
                  (scores.stride(1) == 1 || scores.size(1) <= 1),
              "_activate_rows_: scores must be a float32 CPU matrix with unit column stride");
  TORCH_CHECK(activation == 1 || activation == 2, "_activate_rows_: activation must be 1 (tanh) "
              "or 2 (elu), got ", activation);
  if (scores.numel() == 0) return true;
  return gru4rec::cpu::activate_rows_f32(scores.mutable_data_ptr<float>(), scores.size(0),
                                         scores.size(1), scores.stride(0), activation,
                                         static_cast<float>(alpha));
}

// The chunks [begin, end) that the pool's parallel_for(n, grain) ran, in the order they finished
// (for tests of the partition).
std::vector<std::pair<int64_t, int64_t>> parallel_for_chunks(int64_t n, int64_t grain) {
  std::mutex mutex;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  gru4rec::cpu::parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    std::lock_guard<std::mutex> lock(mutex);
    chunks.emplace_back(begin, end);
  });
  return chunks;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gru4rec-ext compiled kernels (ops are under torch.ops.gru4rec)";
  m.def("build_info", &build_info, "What the extension was built with");
  m.def("set_num_threads", &gru4rec::cpu::set_pool_threads, pybind11::arg("n"),
        "Threads the CPU kernels use, the caller included (their own pool; see csrc/cpu/thread_pool.h)");
  m.def("get_num_threads", &gru4rec::cpu::pool_threads, "Threads the CPU kernels use");
  m.def("cpu_gemm", [] { return gru4rec::cpu::use_own_gemm() ? "avx512" : "blas"; },
        "Which float32 matrix product the CPU kernels use: 'avx512' (our own, csrc/cpu/"
        "gemm_avx512.cpp) or 'blas' (torch's; GRU4REC_GEMM=blas forces it)");
  m.def("set_cpu_gemm", [](const std::string& name) {
          TORCH_CHECK(name == "avx512" || name == "blas",
                      "set_cpu_gemm: name must be 'avx512' or 'blas', got '", name, "'");
          try {
            gru4rec::cpu::set_own_gemm(name == "avx512");
          } catch (const std::invalid_argument& e) {
            TORCH_CHECK(false, "set_cpu_gemm('avx512'): ", e.what());
          }
        }, pybind11::arg("name"), "Chooses the CPU kernels' float32 matrix product for this process");
  m.def("_own_gemm_rows", &own_gemm_rows, pybind11::arg("hidden"), pybind11::arg("weight"),
        pybind11::arg("bias"), pybind11::arg("idx"),
        "bias[idx] + rowwise hidden . weight[idx], bit-equal to those elements of gemm_f32's product");
  m.def("_activate_rows_", &activate_rows, pybind11::arg("scores"), pybind11::arg("activation"),
        pybind11::arg("alpha"), "In place tanh (1) / elu (2) of float32 CPU scores; False: not done");
  m.def("_cpu_mm_out", &cpu_mm_out, pybind11::arg("out"), pybind11::arg("a"), pybind11::arg("b"),
        pybind11::arg("accumulate") = false, pybind11::arg("bias") = std::nullopt,
        "The CPU kernels' matrix product into out (for tests)");
  m.def("_own_gemm_out", &own_gemm_out, pybind11::arg("out"), pybind11::arg("a"),
        pybind11::arg("b"), pybind11::arg("accumulate") = false,
        pybind11::arg("bias") = std::nullopt, "gemm_f32 on one thread (for tests; AVX-512F)");
  m.def("_uniform_fill_", [](at::Tensor out, bool simd) { gru4rec::cpu::uniform_fill(out, std::nullopt, simd); },
        pybind11::arg("out"), pybind11::arg("simd") = true,
        "out.uniform_(0, 1) from torch's default CPU generator through the package's block draws "
        "(csrc/cpu/uniform_cpu.h: the same numbers; for tests)");
  m.def("_parallel_for_chunks", &parallel_for_chunks, pybind11::arg("n"), pybind11::arg("grain"),
        "The chunks (begin, end) of the pool's parallel_for(n, grain) (for tests)");
  gru4rec::bind_schedule(m);
}
