// A host emulation of the CUDA execution model, for the tests: g++ compiles the same kernel
// source as nvcc (csrc/cuda/kernels/*.cuh) and the emulation runs it on the CPU, so that every CI
// run executes every CUDA kernel (see tests/test_cuda_emulation.py and the README).
//
// What it provides, under the names CUDA uses:
//   - __global__, __device__, __host__, __forceinline__, __launch_bounds__(...): no-ops;
//   - dim3, threadIdx, blockIdx, blockDim, gridDim (per emulated thread);
//   - __shared__ (one copy per OS thread; blocks run one after another, so it is per block);
//   - __syncthreads(): a real barrier among the block's live threads;
//   - the warp collectives __shfl_sync, __shfl_xor_sync, __shfl_up_sync, __shfl_down_sync,
//     __ballot_sync, __any_sync, __all_sync, __syncwarp, __activemask: each lane named in the
//     mask must reach the same call with the same mask, warp by warp (so `if (warp == 0)` works);
//   - atomicAdd / atomicMax / atomicMin / atomicCAS / atomicExch (plain read-modify-write: the
//     threads of a launch never run at the same time);
//   - CUDA_KERNEL_ASSERT, which fails the launch with the condition, file, line, block and thread;
//   - launch(kernel, grid, block, shared_bytes, args...), the `<<<grid, block, shared_bytes>>>`.
//
// How: the blocks of a launch run one after another on the calling OS thread; the threads of a
// block are fibers (own 64 KiB stack each, a few machine instructions per switch on x86-64,
// ucontext elsewhere); the lowest (or, by choice, highest) ready thread index runs, until it
// exits or waits at a barrier or a warp collective. A barrier completes when every live thread of the block has reached it
// (threads that returned early do not count, as on the GPU); a collective completes when every
// lane of its mask has reached it. Misuse that is undefined on the GPU is reported as an error
// of the launch (a c10::Error naming kernel file and line) instead of hanging or passing:
//   - a barrier that not all live threads reach (deadlock: e.g. a __syncthreads inside a branch
//     only some threads take), or live threads waiting at different __syncthreads call sites;
//   - a warp collective whose mask names a lane that exited, does not exist, is not the caller,
//     or waits elsewhere; lanes of one collective at different call sites or with other masks;
//     a shuffle reading a lane outside the mask;
//   - an invalid launch configuration (empty grid, more than 1024 threads, grid too large).
// What it does not model: the memory model (every write is visible at once, so a missing
// __threadfence or volatile goes unnoticed), races other than through barrier order, timing,
// occupancy and resource limits (registers, shared memory size), cuBLAS (the host code's ATen
// calls run on the CPU), streams and asynchrony (a launch runs to completion before it returns).
//
// Include it, in a translation unit compiled by a host compiler with GRU4REC_CUDA_EMU defined,
// after the ATen / c10 headers and before the kernel headers.
#pragma once

#ifdef __CUDACC__
#error "cuda_emu.h is for the host compiler (the emulated build), not nvcc"
#endif

#include <c10/macros/Macros.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef GRU4REC_CUDA_EMU
#define GRU4REC_CUDA_EMU 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per OS thread; the blocks of a launch run one at a time on one OS thread.
#define __shared__ static thread_local

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The emulated thread's coordinates, set by the scheduler before it resumes a thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace gru4rec_emu {

// The collectives a warp can wait at.
enum class WarpOp : int { kShfl, kShflXor, kShflUp, kShflDown, kBallot, kAny, kAll, kSync };

// Which ready thread of a block runs next: the lowest index (default) or the highest. A missing
// barrier between a write to shared memory and another thread's read of it gives a stale read
// under one of the two (tests run the kernels with barriers under both).
enum class Schedule : int { kLowFirst, kHighFirst };
Schedule set_schedule(Schedule schedule);  // returns the previous one (per OS thread)

// The most blocks our grid-stride launchers start (csrc/cuda/kernels/launch.cuh:
// max_grid_blocks), 2^16 as on the GPU build unless a test lowers it, so that small tensors take
// the grid-stride loops' later rounds too.
int64_t& grid_block_limit();

// The most indices for which the sparse Adagrad kernels find runs of equal indices by scanning
// rather than after a sort (csrc/cuda/kernels/sparse_adagrad_kernels.cuh: scan_max_indices), 8192
// as on the GPU build unless a test lowers it, so that small cases take the sorted path too.
int64_t& scan_index_limit();

// Entry points of the scheduler (cuda_emu.cpp). `file`/`line` name the call site.
void syncthreads(const char* file, int line);
uint64_t warp_collective(WarpOp op, const char* file, int line, unsigned mask, uint64_t value,
                         int arg, int width);
[[noreturn]] void assert_fail(const char* cond, const char* file, int line);
unsigned active_mask();

// Runs body(ctx) once per thread of every block of the grid; throws c10::Error on misuse or a
// failed CUDA_KERNEL_ASSERT. (The type-erased core of launch below.)
void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>,
                "emulated warp collectives move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
T shfl(WarpOp op, const char* file, int line, unsigned mask, T var, int arg, int width) {
  return from_bits<T>(warp_collective(op, file, line, mask, to_bits(var), arg, width));
}

// kernel<<<grid, block, shared_bytes>>>(args...): the arguments are copied once, as CUDA copies
// them into the launch, and every emulated thread calls the kernel with those copies.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  (void)shared_bytes;  // dynamic shared memory is not used by our kernels (and not emulated)
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> args;
  } ctx{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_grid(grid, block, [](void* p) {
    auto* c = static_cast<Ctx*>(p);
    std::apply(c->kernel, c->args);
  }, &ctx);
}

// Atomics: the emulated threads never run concurrently, so these are plain read-modify-writes.
template <typename T>
T atomic_add(T* address, T val) {
  const T old = *address;
  *address = static_cast<T>(old + val);
  return old;
}

}  // namespace gru4rec_emu

#define __syncthreads() ::gru4rec_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) \
  ((void)::gru4rec_emu::warp_collective(::gru4rec_emu::WarpOp::kSync, __FILE__, __LINE__, \
                                        ::gru4rec_emu::detail_mask(__VA_ARGS__), 0, 0, 32))
#define __shfl_sync(mask, var, lane, ...) \
  ::gru4rec_emu::shfl(::gru4rec_emu::WarpOp::kShfl, __FILE__, __LINE__, mask, var, lane, \
                      ::gru4rec_emu::detail_width(__VA_ARGS__))
#define __shfl_xor_sync(mask, var, lane_mask, ...) \
  ::gru4rec_emu::shfl(::gru4rec_emu::WarpOp::kShflXor, __FILE__, __LINE__, mask, var, lane_mask, \
                      ::gru4rec_emu::detail_width(__VA_ARGS__))
#define __shfl_up_sync(mask, var, delta, ...) \
  ::gru4rec_emu::shfl(::gru4rec_emu::WarpOp::kShflUp, __FILE__, __LINE__, mask, var, \
                      static_cast<int>(delta), ::gru4rec_emu::detail_width(__VA_ARGS__))
#define __shfl_down_sync(mask, var, delta, ...) \
  ::gru4rec_emu::shfl(::gru4rec_emu::WarpOp::kShflDown, __FILE__, __LINE__, mask, var, \
                      static_cast<int>(delta), ::gru4rec_emu::detail_width(__VA_ARGS__))
#define __ballot_sync(mask, pred)                                                          \
  static_cast<unsigned>(::gru4rec_emu::warp_collective(::gru4rec_emu::WarpOp::kBallot,     \
                                                       __FILE__, __LINE__, mask, (pred) ? 1 : 0, \
                                                       0, 32))
#define __any_sync(mask, pred)                                                                  \
  static_cast<int>(::gru4rec_emu::warp_collective(::gru4rec_emu::WarpOp::kAny, __FILE__, __LINE__, \
                                                  mask, (pred) ? 1 : 0, 0, 32))
#define __all_sync(mask, pred)                                                                  \
  static_cast<int>(::gru4rec_emu::warp_collective(::gru4rec_emu::WarpOp::kAll, __FILE__, __LINE__, \
                                                  mask, (pred) ? 1 : 0, 0, 32))
#define __activemask() ::gru4rec_emu::active_mask()

namespace gru4rec_emu {
constexpr int detail_width() { return 32; }
constexpr int detail_width(int width) { return width; }
constexpr unsigned detail_mask() { return 0xffffffffu; }
constexpr unsigned detail_mask(unsigned mask) { return mask; }
}  // namespace gru4rec_emu

template <typename T>
T atomicAdd(T* address, T val) { return gru4rec_emu::atomic_add(address, val); }
template <typename T>
T atomicMax(T* address, T val) {
  const T old = *address;
  *address = old < val ? val : old;
  return old;
}
template <typename T>
T atomicMin(T* address, T val) {
  const T old = *address;
  *address = val < old ? val : old;
  return old;
}
template <typename T>
T atomicExch(T* address, T val) {
  const T old = *address;
  *address = val;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T val) {
  const T old = *address;
  if (old == compare) *address = val;
  return old;
}

// A failed device assert fails the launch (on the GPU: cudaErrorAssert at the next sync).
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (C10_UNLIKELY(!(cond))) ::gru4rec_emu::assert_fail(#cond, __FILE__, __LINE__); \
  } while (0)
