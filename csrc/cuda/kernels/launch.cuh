// The one kernel launch of our CUDA code, shared by the GPU build and the host emulation:
// under nvcc `kernel<<<grid, block, 0, current stream>>>(args...)` and the launch check; under
// the emulation (GRU4REC_CUDA_EMU, a host compiler) gru4rec_emu::launch, which runs every thread
// of every block on the CPU (csrc/emu/cuda_emu.h). Also the device guard and the dtype dispatch
// the launchers use, so that the emulated build runs the same launch code as the GPU build.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

#ifdef GRU4REC_CUDA_EMU
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "emu/cuda_emu.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace gru4rec {

// The floating dtypes every CUDA kernel of ours is compiled for (float accumulation for bf16).
#define GRU4REC_CUDA_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// kernel<<<grid, block>>>(args...) on the current stream (arguments converted to the kernel's
// parameter types, as a launch converts them).
template <typename... Params>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block,
                   std::type_identity_t<Params>... args) {
#ifdef GRU4REC_CUDA_EMU
  gru4rec_emu::launch(kernel, grid, block, 0, args...);
#else
  kernel<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// The most blocks a grid-stride launcher starts (its kernel then loops over the rest). The
// emulation's tests lower it (gru4rec_ext._cuda_emu.set_max_grid_blocks) so that small tensors
// take the grid-stride loop's later rounds too.
#ifdef GRU4REC_CUDA_EMU
inline int64_t max_grid_blocks() { return gru4rec_emu::grid_block_limit(); }
#else
constexpr int64_t max_grid_blocks() { return int64_t(1) << 16; }
#endif

#ifdef GRU4REC_CUDA_EMU
// The emulated device is the CPU: the guard only checks that it is given one, as CUDAGuard
// throws for a device that is not CUDA.
struct DeviceGuard {
  explicit DeviceGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "CUDA emulation: device guard for a non-CPU device ", device);
  }
};
#else
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

}  // namespace gru4rec
