// The scheduler of the host CUDA emulation (see cuda_emu.h): fibers for the threads of a block,
// barriers, warp collectives, and the checks that turn undefined GPU behaviour into errors.
#include "emu/cuda_emu.h"

#include <atomic>

#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#if defined(__x86_64__) && !defined(GRU4REC_EMU_UCONTEXT)
#define GRU4REC_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#ifdef GRU4REC_EMU_ASM_SWITCH
// gru4rec_emu_switch(save, load): saves the callee-saved registers and the x87 / SSE control
// words on the current stack, stores the stack pointer in *save, and resumes the context whose
// stack pointer is `load`. A new fiber's stack is laid out as if it had called the switch, with
// the trampoline as return address; the trampoline calls the function in r13.
extern "C" void gru4rec_emu_switch(void** save, void* load);
extern "C" void gru4rec_emu_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl gru4rec_emu_switch
  .hidden gru4rec_emu_switch
  .type gru4rec_emu_switch,@function
gru4rec_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gru4rec_emu_switch, .-gru4rec_emu_switch

  .p2align 4
  .globl gru4rec_emu_trampoline
  .hidden gru4rec_emu_trampoline
  .type gru4rec_emu_trampoline,@function
gru4rec_emu_trampoline:
  callq *%r13
  ud2
  .size gru4rec_emu_trampoline, .-gru4rec_emu_trampoline
)");
#endif

namespace gru4rec_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;  // per emulated thread; a guard page lies below each
constexpr unsigned kMaxThreads = 1024;

enum class State { kReady, kBarrier, kWarp, kDone };

struct Fiber {
#ifdef GRU4REC_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  uint3 tid;
  int linear = 0;
  State state = State::kReady;
  const char* what = "";  // where it waits: "__syncthreads", "__shfl_xor_sync", ...
  const char* file = "";
  int line = 0;
};

// The collective a warp is gathering, and the lanes that have reached it.
struct Warp {
  unsigned existing = 0;  // lanes that exist in the block
  unsigned exited = 0;
  unsigned arrived = 0;
  WarpOp op = WarpOp::kSync;
  const char* file = "";
  int line = 0;
  unsigned mask = 0;
  int width = 32;
  uint64_t value[32] = {};
  int arg[32] = {};
  uint64_t result[32] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<uint64_t> ready;  // bit i: fiber i can run
  int live = 0;        // threads that have not exited
  int at_barrier = 0;  // live threads waiting at __syncthreads
  int current = -1;    // the running fiber
  std::string error;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
#ifdef GRU4REC_EMU_ASM_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
};

thread_local Block* g_block = nullptr;
thread_local Schedule g_schedule = Schedule::kLowFirst;

void set_ready(Block& b, Fiber& f) {
  f.state = State::kReady;
  b.ready[static_cast<size_t>(f.linear) / 64] |= uint64_t(1) << (f.linear % 64);
}

// Marks the running fiber as waiting (or done); it runs again once set_ready.
void set_waiting(Block& b, Fiber& f, State state) {
  f.state = state;
  b.ready[static_cast<size_t>(f.linear) / 64] &= ~(uint64_t(1) << (f.linear % 64));
}

// The ready fiber the schedule runs next: the lowest (or highest) thread index; -1 if none.
int next_ready(const Block& b) {
  const int words = static_cast<int>(b.ready.size());
  if (g_schedule == Schedule::kLowFirst) {
    for (int w = 0; w < words; ++w)
      if (b.ready[w] != 0) return w * 64 + __builtin_ctzll(b.ready[w]);
  } else {
    for (int w = words - 1; w >= 0; --w)
      if (b.ready[w] != 0) return w * 64 + 63 - __builtin_clzll(b.ready[w]);
  }
  return -1;
}

// Fiber stacks of this OS thread, kept between launches: [guard page][kStackBytes] per thread.
struct StackPool {
  char* base = nullptr;
  size_t count = 0;
  size_t stride = 0;
  ~StackPool() {
    if (base != nullptr) munmap(base, count * stride);
  }
  char* top(size_t i) const { return base + i * stride + stride; }
  void ensure(size_t n) {
    if (n <= count) return;
    if (base != nullptr) munmap(base, count * stride);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    stride = kStackBytes + page;
    void* p = mmap(nullptr, n * stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "CUDA emulation: could not map ", n, " fiber stacks");
    base = static_cast<char*>(p);
    count = n;
    for (size_t i = 0; i < n; ++i) mprotect(base + i * stride, page, PROT_NONE);
  }
};
thread_local StackPool g_stacks;

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShfl: return "__shfl_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kSync: return "__syncwarp";
  }
  return "?";
}

std::string where(const Block& b, const Fiber& f) {
  std::ostringstream os;
  os << "block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << "), thread ("
     << f.tid.x << "," << f.tid.y << "," << f.tid.z << ")";
  (void)b;
  return os.str();
}

// Switches from the running fiber back to the scheduler.
void to_scheduler(Block& b) {
  Fiber& f = b.fibers[b.current];
#ifdef GRU4REC_EMU_ASM_SWITCH
  gru4rec_emu_switch(&f.sp, b.sched_sp);
#else
  swapcontext(&f.ctx, &b.sched_ctx);
#endif
}

// Fails the launch from inside the running fiber: records the error, never resumes it.
[[noreturn]] void fail(Block& b, const std::string& msg) {
  b.error = "CUDA emulation: " + msg;
  to_scheduler(b);
  std::abort();  // unreachable: a failed fiber is never resumed
}

// "threads 0-31 wait at __shfl_xor_sync (file:line); threads 32-255 wait at ..." for the fibers
// in one of `states`.
std::string describe(const Block& b, std::initializer_list<State> states) {
  std::ostringstream os;
  const int n = static_cast<int>(b.fibers.size());
  bool first = true;
  for (int i = 0; i < n;) {
    const Fiber& f = b.fibers[i];
    if (std::find(states.begin(), states.end(), f.state) == states.end()) {
      ++i;
      continue;
    }
    int j = i + 1;
    while (j < n && b.fibers[j].state == f.state && b.fibers[j].line == f.line &&
           std::strcmp(b.fibers[j].file, f.file) == 0 && std::strcmp(b.fibers[j].what, f.what) == 0)
      ++j;
    os << (first ? "" : "; ") << "threads " << i;
    if (j - 1 > i) os << "-" << j - 1;
    os << " wait at " << f.what << " (" << f.file << ":" << f.line << ")";
    first = false;
    i = j;
  }
  return os.str();
}

// Releases the barrier once every live thread waits at it (at one call site).
void release_barrier(Block& b) {
  const Fiber* first = nullptr;
  for (const Fiber& f : b.fibers) {
    if (f.state != State::kBarrier) continue;
    if (first == nullptr) {
      first = &f;
    } else if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      fail(b, "divergent __syncthreads in block (" + std::to_string(blockIdx.x) + "," +
                  std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) +
                  "): the live threads wait at different barriers: " +
                  describe(b, {State::kBarrier}));
    }
  }
  for (Fiber& f : b.fibers)
    if (f.state == State::kBarrier) set_ready(b, f);
  b.at_barrier = 0;
}

// The running fiber's thread has returned from the kernel.
[[noreturn]] void thread_exit(Block& b) {
  Fiber& f = b.fibers[b.current];
  set_waiting(b, f, State::kDone);
  --b.live;
  Warp& w = b.warps[f.linear / 32];
  const unsigned bit = 1u << (f.linear % 32);
  w.exited |= bit;
  if (w.arrived != 0 && (w.mask & bit) != 0) {
    fail(b, "thread exited while the other lanes of its warp wait for it at " +
                std::string(op_name(w.op)) + " (" + w.file + ":" + std::to_string(w.line) +
                "), " + where(b, f));
  }
  if (b.at_barrier > 0 && b.at_barrier == b.live) release_barrier(b);
  to_scheduler(b);
  std::abort();  // unreachable: an exited fiber is never resumed
}

extern "C" void gru4rec_emu_fiber_main() {
  Block& b = *g_block;
  b.body(b.ctx);
  thread_exit(b);
}

#ifndef GRU4REC_EMU_ASM_SWITCH
void fiber_main_ucontext() { gru4rec_emu_fiber_main(); }
#endif

// Makes fiber i start the kernel from the beginning when it is next resumed.
void init_fiber(Block& b, int i) {
  Fiber& f = b.fibers[i];
  set_ready(b, f);
  // Stacks start at staggered offsets: tops 68 KiB apart would all share a few L1 sets.
  char* top = g_stacks.top(static_cast<size_t>(i)) - (i % 61) * 64;
#ifdef GRU4REC_EMU_ASM_SWITCH
  // The frame gru4rec_emu_switch pops: x87 control word, MXCSR, r15, r14, r13 (the function the
  // trampoline calls), r12, rbx, rbp, return address (the trampoline). After `ret` the stack
  // pointer is 16-byte aligned, as the trampoline's call needs.
  uint16_t fcw;
  uint32_t mxcsr;
  asm volatile("fnstcw %0" : "=m"(fcw));
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  auto* s = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15)) - 88);
  s[0] = fcw;
  s[1] = mxcsr;
  s[2] = s[3] = 0;
  s[4] = reinterpret_cast<uint64_t>(&gru4rec_emu_fiber_main);
  s[5] = s[6] = s[7] = 0;
  s[8] = reinterpret_cast<uint64_t>(&gru4rec_emu_trampoline);
  f.sp = s;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = top - kStackBytes;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main_ucontext, 0);
#endif
}

void resume(Block& b, int i) {
  b.current = i;
  threadIdx = b.fibers[i].tid;
#ifdef GRU4REC_EMU_ASM_SWITCH
  gru4rec_emu_switch(&b.sched_sp, b.fibers[i].sp);
#else
  swapcontext(&b.sched_ctx, &b.fibers[i].ctx);
#endif
  b.current = -1;
}

// Runs one block to completion; leaves an error in b.error on misuse or deadlock. The schedule
// always resumes the lowest (kLowFirst) or highest ready thread index, so low (high) warps run
// as far ahead of the others as the barriers allow: a read of shared memory that a missing
// barrier leaves unordered reads the stale value under one of the two schedules.
void run_block(Block& b) {
  const int n = static_cast<int>(b.fibers.size());
  std::fill(b.ready.begin(), b.ready.end(), 0);
  for (int i = 0; i < n; ++i) init_fiber(b, i);
  for (Warp& w : b.warps) {
    w.exited = w.arrived = 0;
  }
  b.live = n;
  b.at_barrier = 0;
  while (b.live > 0) {
    const int i = next_ready(b);
    if (i >= 0) {
      resume(b, i);
      if (!b.error.empty()) return;
    } else {
      b.error = "CUDA emulation: deadlock in block (" + std::to_string(blockIdx.x) + "," +
                std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) +
                "): a barrier or warp collective that not every thread it waits for reaches: " +
                describe(b, {State::kBarrier, State::kWarp});
      return;
    }
  }
}

}  // namespace

// Launches run so far (every valid one), for the launch counts per training step (the module's
// `launches()`; declared there, not in cuda_emu.h, which the kernels include).
std::atomic<int64_t> g_launches{0};

int64_t launch_count() { return g_launches.load(); }

void run_grid(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.z <= 64 && grid.x >= 1 &&
                  grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
                  grid.z <= 65535,
              "CUDA emulation: invalid configuration argument: grid (", grid.x, ",", grid.y, ",",
              grid.z, "), block (", block.x, ",", block.y, ",", block.z,
              ") (the GPU would fail the launch with cudaErrorInvalidConfiguration)");
  TORCH_CHECK(g_block == nullptr, "CUDA emulation: a launch from inside a kernel is not supported");
  g_launches.fetch_add(1);
  const int n = static_cast<int>(threads);
  g_stacks.ensure(static_cast<size_t>(n));
  Block b;
  b.body = body;
  b.ctx = ctx;
  b.fibers.resize(static_cast<size_t>(n));
  b.warps.resize(static_cast<size_t>((n + 31) / 32));
  b.ready.resize(static_cast<size_t>((n + 63) / 64));
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[static_cast<size_t>(i)];
    f.linear = i;
    f.tid.x = static_cast<unsigned>(i) % block.x;
    f.tid.y = static_cast<unsigned>(i) / block.x % block.y;
    f.tid.z = static_cast<unsigned>(i) / (block.x * block.y);
    b.warps[static_cast<size_t>(i / 32)].existing |= 1u << (i % 32);
  }
  blockDim = block;
  gridDim = grid;
  g_block = &b;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx.x = x;
        blockIdx.y = y;
        blockIdx.z = z;
        run_block(b);
        if (!b.error.empty()) {
          g_block = nullptr;
          TORCH_CHECK(false, b.error);
        }
      }
    }
  }
  g_block = nullptr;
}

void syncthreads(const char* file, int line) {
  TORCH_CHECK(g_block != nullptr, "CUDA emulation: __syncthreads outside a kernel");
  Block& b = *g_block;
  Fiber& f = b.fibers[b.current];
  set_waiting(b, f, State::kBarrier);
  f.what = "__syncthreads";
  f.file = file;
  f.line = line;
  if (++b.at_barrier == b.live) release_barrier(b);
  if (f.state == State::kBarrier) to_scheduler(b);
}

uint64_t warp_collective(WarpOp op, const char* file, int line, unsigned mask, uint64_t value,
                         int arg, int width) {
  TORCH_CHECK(g_block != nullptr, "CUDA emulation: ", op_name(op), " outside a kernel");
  Block& b = *g_block;
  Fiber& f = b.fibers[b.current];
  const int lane = f.linear % 32;
  Warp& w = b.warps[f.linear / 32];
  const auto site = [&] {  // built only for an error message
    return std::string(op_name(op)) + " (" + file + ":" + std::to_string(line) + ")";
  };
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(b, site() + ": width " + std::to_string(width) + " is not a power of 2 up to 32, " + where(b, f));
  if (((mask >> lane) & 1u) == 0)
    fail(b, site() + ": the mask does not name the calling lane " + std::to_string(lane) + ", " + where(b, f));
  if ((mask & ~w.existing) != 0)
    fail(b, site() + ": the mask names lanes that do not exist in this block (blockDim " +
                std::to_string(blockDim.x * blockDim.y * blockDim.z) + "), " + where(b, f));
  if ((mask & w.exited) != 0)
    fail(b, site() + ": the mask names lanes that have exited, " + where(b, f));
  if (w.arrived == 0) {
    w.op = op;
    w.file = file;
    w.line = line;
    w.mask = mask;
    w.width = width;
  } else if (w.op != op || w.line != line || std::strcmp(w.file, file) != 0 || w.mask != mask ||
             w.width != width) {
    fail(b, "divergent warp collective: lane " + std::to_string(lane) + " reaches " + site() +
                " while other lanes of its warp wait at " + op_name(w.op) + " (" + w.file + ":" +
                std::to_string(w.line) + ")" + (w.mask != mask ? " with another mask" : "") +
                ", " + where(b, f));
  }
  w.value[lane] = value;
  w.arg[lane] = arg;
  w.arrived |= 1u << lane;
  if (w.arrived == mask) {
    uint64_t vote = 0;
    for (int l = 0; l < 32; ++l)
      if (((mask >> l) & 1u) && w.value[l] != 0) vote |= uint64_t(1) << l;
    for (int l = 0; l < 32; ++l) {
      if (((mask >> l) & 1u) == 0) continue;
      const int seg = l & ~(width - 1);
      int src = l;
      switch (op) {
        case WarpOp::kShfl: src = seg + (w.arg[l] & (width - 1)); break;
        case WarpOp::kShflXor: src = l ^ w.arg[l]; src = src >= seg + width ? l : src; break;
        case WarpOp::kShflUp: src = l - w.arg[l]; src = src < seg ? l : src; break;
        case WarpOp::kShflDown: src = l + w.arg[l]; src = src >= seg + width ? l : src; break;
        default: break;
      }
      if (src < 0 || src > 31 || ((mask >> src) & 1u) == 0)
        fail(b, site() + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                    ", which is not in the mask (an undefined value on the GPU), " + where(b, f));
      switch (op) {
        case WarpOp::kBallot: w.result[l] = vote; break;
        case WarpOp::kAny: w.result[l] = vote != 0; break;
        case WarpOp::kAll: w.result[l] = vote == mask; break;
        case WarpOp::kSync: w.result[l] = 0; break;
        default: w.result[l] = w.value[src]; break;
      }
    }
    for (int l = 0; l < 32; ++l) {
      Fiber* g = ((mask >> l) & 1u) ? &b.fibers[static_cast<size_t>(f.linear / 32 * 32 + l)] : nullptr;
      if (g != nullptr && g->state == State::kWarp) set_ready(b, *g);
    }
    w.arrived = 0;
    return w.result[lane];
  }
  set_waiting(b, f, State::kWarp);
  f.what = op_name(op);
  f.file = file;
  f.line = line;
  to_scheduler(b);
  return w.result[lane];
}

[[noreturn]] void assert_fail(const char* cond, const char* file, int line) {
  TORCH_CHECK(g_block != nullptr, "CUDA_KERNEL_ASSERT outside a kernel: ", cond);
  Block& b = *g_block;
  fail(b, std::string("CUDA_KERNEL_ASSERT failed: `") + cond + "` at " + file + ":" +
              std::to_string(line) + ", " + where(b, b.fibers[b.current]));
}

int64_t& grid_block_limit() {
  static int64_t blocks = int64_t(1) << 16;
  return blocks;
}

int64_t& scan_index_limit() {
  static int64_t limit = 8192;
  return limit;
}

Schedule set_schedule(Schedule schedule) {
  const Schedule old = g_schedule;
  g_schedule = schedule;
  return old;
}

unsigned active_mask() {
  TORCH_CHECK(g_block != nullptr, "CUDA emulation: __activemask outside a kernel");
  Block& b = *g_block;
  const Warp& w = b.warps[b.fibers[b.current].linear / 32];
  return w.existing & ~w.exited;
}

}  // namespace gru4rec_emu
