// gru4rec::alias_sample_: a block of negative samples by Walker's alias method (SPEC section 4)
// from a torch generator, the same numbers as the ATen sequence the sampler ran,
//   i = torch.randint(0, N, (S,), generator=g); u = torch.rand(S, generator=g)
//   out = torch.where(u < prob[i], i, alias[i])
// in one pass over the words of the generator instead of five tensor ops. Schema and checks; the
// CPU kernel is csrc/cpu/alias_sample_cpu.cpp (other devices run the sequence in Python).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace gru4rec {

void check_alias_sample_args(const at::Tensor& out, const at::Tensor& prob, const at::Tensor& alias) {
  TORCH_CHECK(out.dim() == 1 && out.scalar_type() == at::kLong && out.is_contiguous(),
              "alias_sample_: out must be a contiguous 1-D int64 tensor, got ", out.scalar_type(), " with ",
              out.dim(), " dims");
  TORCH_CHECK(prob.dim() == 1 && prob.scalar_type() == at::kFloat && prob.numel() > 0,
              "alias_sample_: prob must be a non-empty 1-D float32 tensor, got ", prob.scalar_type(), " with shape ",
              prob.sizes());
  TORCH_CHECK(alias.dim() == 1 && alias.scalar_type() == at::kLong && alias.size(0) == prob.size(0),
              "alias_sample_: alias must be an int64 [N=", prob.size(0), "] tensor, got ", alias.scalar_type(),
              " with shape ", alias.sizes());
  TORCH_CHECK(out.device() == prob.device() && alias.device() == prob.device(),
              "alias_sample_: out, prob and alias must be on one device");
}

}  // namespace gru4rec

TORCH_LIBRARY_FRAGMENT(gru4rec, m) {
  // out int64 [S] (in place), prob float32 [N], alias int64 [N] (every alias in [0, N)): the alias
  // method's draws from `generator` (default: the device's default generator). See above.
  m.def("alias_sample_(Tensor(a!) out, Tensor prob, Tensor alias, Generator? generator=None) -> ()");
}
