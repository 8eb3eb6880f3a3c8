// Small kernels that check the emulation itself (csrc/emu/cuda_emu.h): that barriers, warp
// collectives and device asserts behave as on the GPU, and that misuse which is undefined on the
// GPU fails the launch. gru4rec_ext._cuda_emu.selftest(name) runs one; tests/test_cuda_emulation.py
// checks each result or error.
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "emu/cuda_emu.h"

namespace gru4rec_emu {
namespace {

constexpr int kBlock = 256;

// Sum of x[b*n, (b+1)*n) per block b, through warp shuffles and one warp over the partials (the
// shape of the loss kernel's block_reduce). variant 1 drops the barrier after the partials are
// written, variant 3 the one before the total is read; variant 2 returns threads >= 200 before
// any barrier (legal: live threads only).
__global__ void block_sum_kernel(const float* x, float* out, int n, int variant) {
  __shared__ float partials[kBlock / 32];
  __shared__ float total;
  if (variant == 2 && threadIdx.x >= 200) return;
  float v = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned mask = variant == 2 && warp == 6 ? 0xffu : 0xffffffffu;  // threads 192-199
  for (int off = 16; off > 0; off >>= 1) {
    if (variant == 2 && warp == 6 && off > 4) continue;  // 8 live lanes: offsets 4, 2, 1
    v += __shfl_xor_sync(mask, v, off);
  }
  if (lane == 0) partials[warp] = v;
  if (variant != 1) __syncthreads();
  const int warps = variant == 2 ? 7 : kBlock / 32;
  if (warp == 0) {
    float y = lane < warps ? partials[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) y += __shfl_xor_sync(0xffffffffu, y, off);
    if (lane == 0) total = y;
  }
  if (variant != 3) __syncthreads();
  // The last live thread (another warp than the one that wrote it) reads the total.
  if (static_cast<int>(threadIdx.x) == (variant == 2 ? 199 : kBlock - 1)) out[blockIdx.x] = total;
}

// Warp collectives of one warp: out[k * 32 + lane] for k = shfl, xor, up, down, ballot, any, all.
__global__ void collectives_kernel(float* out) {
  const int lane = threadIdx.x;
  const float v = static_cast<float>(lane * lane);
  out[lane] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
  out[32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[64 + lane] = __shfl_up_sync(0xffffffffu, v, 3);
  out[96 + lane] = __shfl_down_sync(0xffffffffu, v, 3, 16);
  out[128 + lane] = static_cast<float>(__ballot_sync(0xffffffffu, lane % 3 == 0) == 0x49249249u);
  out[160 + lane] = static_cast<float>(__any_sync(0xffffffffu, lane == 31));
  out[192 + lane] = static_cast<float>(__all_sync(0xffffffffu, lane < 31));
}

// Misuse, one case each; every one of these is undefined (or a deadlock) on the GPU.
__global__ void misuse_kernel(int which, float* out) {
  const int tid = threadIdx.x, lane = tid & 31;
  float v = static_cast<float>(tid);
  switch (which) {
    case 0:  // the halves of the block wait at different barriers
      if (tid < 64) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 1:  // lanes 0-15 wait at a barrier, lanes 16-31 at a shuffle that needs lanes 0-15
      if (tid < 16) {
        __syncthreads();
      } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      }
      break;
    case 2:  // lane 5 exits, the others shuffle with a full mask
      if (lane == 5) return;
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 3:  // the lanes of a warp reach different shuffles
      if (lane < 8) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
      } else {
        v = __shfl_xor_sync(0xffffffffu, v, 2);
      }
      break;
    case 4:  // a full-mask shuffle in a warp of 16 lanes (blockDim 48)
      v = __shfl_xor_sync(0xffffffffu, v, 1);
      break;
    case 5:  // a device assert fails in thread 77
      CUDA_KERNEL_ASSERT(tid != 77);
      break;
    case 6:  // a shuffle reads a lane outside its mask
      v = __shfl_sync(0x0000ffffu, v, 20);
      break;
    default:
      break;
  }
  out[tid] = v;
}

}  // namespace

// Runs self-test `name`; returns its output, or throws the emulation's error.
std::vector<float> selftest(const std::string& name) {
  if (name == "block_sum" || name == "block_sum_missing_barrier" ||
      name == "block_sum_early_exit" || name == "block_sum_missing_second_barrier") {
    const int blocks = 5, n = 1000;
    std::vector<float> x(blocks * n), out(blocks, -1.0f);
    for (int i = 0; i < blocks * n; ++i) x[i] = static_cast<float>(i % 13) - 6.0f + 0.25f;
    const int variant = name == "block_sum" ? 0 : name == "block_sum_missing_barrier" ? 1
                        : name == "block_sum_early_exit"    ? 2
                                                            : 3;
    launch(block_sum_kernel, dim3(blocks), dim3(kBlock), 0, x.data(), out.data(), n, variant);
    return out;
  }
  if (name == "collectives") {
    std::vector<float> out(7 * 32);
    launch(collectives_kernel, dim3(1), dim3(32), 0, out.data());
    return out;
  }
  const char* misuse[] = {"divergent_barrier", "barrier_deadlock", "shuffle_exited_lane",
                          "divergent_shuffle", "shuffle_missing_lanes", "device_assert",
                          "shuffle_outside_mask"};
  for (int k = 0; k < 7; ++k) {
    if (name == misuse[k]) {
      std::vector<float> out(kBlock);
      launch(misuse_kernel, dim3(2), dim3(k == 4 ? 48 : kBlock), 0, k, out.data());
      return out;
    }
  }
  if (name == "empty_grid") {
    std::vector<float> out(kBlock);
    launch(misuse_kernel, dim3(0), dim3(kBlock), 0, -1, out.data());
    return out;
  }
  if (name == "too_many_threads") {
    std::vector<float> out(2048);
    launch(misuse_kernel, dim3(1), dim3(2048), 0, -1, out.data());
    return out;
  }
  TORCH_CHECK(false, "unknown emulation self-test ", name);
}

}  // namespace gru4rec_emu
