// The CPU kernels' own worker threads, built to hold up when the cores are shared.
//
// OpenMP's fork-join (what at::parallel_for uses) makes every parallel region wait at its end for
// every thread of the team, including one that a busy core has not even scheduled yet, and its idle
// threads spin between regions, taking the very core the others need. A training step has dozens of
// small regions, so on a loaded machine each costs a scheduler time slice (measured: 33x slower than
// one thread). Here instead:
//   - work is split into chunks that threads CLAIM with an atomic counter; the calling thread claims
//     chunks too, so a worker that has not started by the time the caller is done claims nothing and
//     costs nothing; the caller waits only for chunks a worker has actually claimed;
//   - idle workers spin briefly (a few microseconds), then sleep on a futex (std::atomic::wait);
//   - workers run ATen/BLAS calls single-threaded (no nested OpenMP or MKL teams).
// parallel_for called from inside a chunk runs inline (no nesting).
#pragma once

#include <cstdint>
#include <utility>

namespace gru4rec {
namespace cpu {

// Threads parallel_for uses, the caller included (>= 1). Default: the torch intra-op thread count of
// the first thread that asks (at::get_num_threads(), so OMP_NUM_THREADS and torch.set_num_threads
// set before then are honoured).
int pool_threads();
// Sets it (n >= 1); workers are started on demand, surplus ones sleep.
void set_pool_threads(int n);
// True inside a chunk of parallel_for (on any thread).
bool in_pool_chunk();

namespace detail {
using ChunkFn = void (*)(const void* body, int64_t begin, int64_t end);
void run_parallel(int64_t n, int64_t grain, ChunkFn fn, const void* body);
}  // namespace detail

// Runs body(begin, end) over [0, n) in contiguous chunks of equal sizes (within one element), about
// `grain` elements or more each (their count is rounded up to a multiple of the threads, so that
// the threads' shares come out even), on the calling thread and the pool's workers; returns when
// all are done. With one
// thread, n <= grain, or inside a chunk, it is simply body(0, n). Exceptions thrown by body are
// rethrown here (the first one; the other chunks still run).
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& body) {
  if (n <= 0) return;
  if (n <= grain || pool_threads() <= 1 || in_pool_chunk()) {
    body(int64_t(0), n);
    return;
  }
  detail::run_parallel(
      n, grain, [](const void* b, int64_t begin, int64_t end) { (*static_cast<const F*>(b))(begin, end); },
      &body);
}

}  // namespace cpu
}  // namespace gru4rec
