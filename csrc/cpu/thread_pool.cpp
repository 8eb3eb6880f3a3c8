// The CPU kernels' worker threads; see thread_pool.h for why they are not OpenMP's.
#include "cpu/thread_pool.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GRU4REC_CPU_RELAX() _mm_pause()
#else
#define GRU4REC_CPU_RELAX() std::this_thread::yield()
#endif

namespace gru4rec {
namespace cpu {
namespace {

thread_local bool t_in_chunk = false;

// Pause iterations an idle worker spins before it sleeps (about 10-40 us), and a waiting caller
// spins before it starts yielding its core.
constexpr int kWorkerSpin = 2000;
constexpr int kCallerSpin = 4000;
// At most this many chunks per thread: claiming is dynamic, so a few per thread balance the load
// when one thread is slowed down by another process.
constexpr int64_t kChunksPerThread = 4;

using Clock = std::chrono::steady_clock;
// A wait longer than two of the caller's chunks plus this is a stall (see Pool::update_backoff).
constexpr Clock::duration kStallSlack = std::chrono::microseconds(50);

// Makes ATen, OpenMP and MKL calls made on this (worker) thread single-threaded.
void make_thread_serial() {
  (void)at::get_num_threads();  // ATen's lazy per-thread init first, so that it cannot undo the rest
  omp_set_num_threads(1);       // this thread's OpenMP ICV (at::parallel_for and MKL's default)
  // MKL (torch's x86 BLAS) keeps its own per-thread count; its C entry point takes the int by value
  // (the lower-case name is the Fortran one, which takes a pointer).
  using SetLocal = int (*)(int);
  if (auto mkl_local = reinterpret_cast<SetLocal>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"))) {
    mkl_local(1);
  }
}

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: its sleeping workers may outlive static destructors
    return *pool;
  }

  int threads() {
    int n = threads_.load(std::memory_order_relaxed);
    if (n > 0) return n;
    n = std::max(1, at::get_num_threads());
    int expected = 0;
    threads_.compare_exchange_strong(expected, n);
    return threads_.load(std::memory_order_relaxed);
  }

  void set_threads(int n) {
    TORCH_CHECK(n >= 1, "gru4rec: the number of CPU threads must be >= 1, got ", n);
    // A new count starts without the back-off of the old one (a caller that asks for threads,
    // such as the trainer's probe of 2 against 1, gets them), unless a job is running right now.
    if (threads_.exchange(n, std::memory_order_relaxed) != n) {
      std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
      if (lock.owns_lock()) backoff_ = backoff_left_ = 0;
    }
  }

  void run(int64_t n, int64_t grain, detail::ChunkFn fn, const void* body) {
    const int nthreads = threads();
    // One job at a time: a second caller (another Python thread) runs its work inline instead of waiting.
    std::unique_lock<std::mutex> lock(run_mutex_, std::try_to_lock);
    if (!lock.owns_lock()) {
      fn(body, 0, n);
      return;
    }
    if (backoff_left_ > 0) {  // workers were stalled lately: run alone for a while
      --backoff_left_;
      fn(body, 0, n);
      return;
    }
    ensure_workers(nthreads - 1);
    const int64_t max_chunks = kChunksPerThread * nthreads;
    // As many chunks as the grain allows (at most max_chunks), rounded up to a multiple of the
    // threads when n allows, and of equal sizes (within one): a grain of 73 rows over 80 makes two
    // chunks of 40, not 73 and 7; 14 column panels in pieces of 3 make 6 chunks (2 or 3 panels), of
    // which each thread can take 3, not 5 chunks of 3, 3, 3, 3 and 2.
    const int64_t g = std::max<int64_t>(grain, 1);
    const int64_t most = std::min(max_chunks, (n + g - 1) / g);
    const int64_t total = std::min(n, (most + nthreads - 1) / nthreads * nthreads);
    fn_.store(fn, std::memory_order_relaxed);
    body_.store(body, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    total_.store(total, std::memory_order_relaxed);
    active_workers_.store(nthreads - 1, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    // The caller's dispatch state (e.g. "below autograd") and grad mode hold for the chunks on the
    // workers too (ATen calls there, such as the pieces of a product, must see what the caller sees).
    grad_mode_.store(c10::GradMode::is_enabled(), std::memory_order_relaxed);
    const auto keys = c10::impl::tls_local_dispatch_key_set();
    included_.store(keys.included_.raw_repr(), std::memory_order_relaxed);
    excluded_.store(keys.excluded_.raw_repr(), std::memory_order_relaxed);
    const uint32_t seq = ++seq_counter_;
    claim_.store(static_cast<uint64_t>(seq) << 32, std::memory_order_release);
    seq_.store(seq, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) seq_.notify_all();

    const auto t0 = Clock::now();
    const int64_t own = claim_and_run(seq);
    const auto t1 = Clock::now();
    // Wait only for the chunks that workers claimed and are still running.
    for (int spins = 0; done_.load(std::memory_order_acquire) < total; ++spins) {
      if (spins < kCallerSpin) {
        GRU4REC_CPU_RELAX();
      } else {
        std::this_thread::yield();
      }
    }
    // Close the job before the next one rewrites its fields: a worker that loaded a claim word of
    // this job and was preempted before its compare-exchange must not succeed later, against the
    // next job's larger total_, and run (and count in done_) a chunk that no job gave it.
    claim_.store((static_cast<uint64_t>(seq) << 32) | kClosed, std::memory_order_release);
    update_backoff(own, t1 - t0, Clock::now() - t1);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  Pool() = default;

  // The claim counter of a finished job: above any chunk count, so no chunk of it can be claimed.
  static constexpr uint64_t kClosed = 0xffffffffu;

  // A worker that a busy core took away in the middle of a chunk makes the caller wait for it, up to
  // a scheduler time slice. When the caller waited much longer than a chunk takes (a stall), it runs
  // the next jobs alone: 16 of them after one stall, twice as many after each further stall in a
  // row (at most 4096), fewer again after jobs that ran in parallel without one. So a machine
  // busy with other work gets about one thread's speed instead of a collapse, and a quiet one
  // keeps both threads.
  void update_backoff(int64_t own_chunks, Clock::duration own, Clock::duration waited) {
    const auto per_chunk = own / std::max<int64_t>(own_chunks, 1);
    if (waited > 2 * per_chunk + kStallSlack) {
      backoff_ = std::min<int64_t>(std::max<int64_t>(16, 2 * backoff_), 4096);
      backoff_left_ = backoff_;
    } else {
      backoff_ /= 2;
    }
  }

  // Claims and runs chunks of job `seq` until none is left (or the job is no longer `seq`);
  // returns how many it ran.
  int64_t claim_and_run(uint32_t seq) {
    for (int64_t ran = 0;; ++ran) {
      uint64_t word = claim_.load(std::memory_order_acquire);
      if ((word >> 32) != seq) return ran;
      const int64_t c = static_cast<int64_t>(word & 0xffffffffu);
      if (c >= total_.load(std::memory_order_relaxed)) return ran;
      if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) {
        --ran;
        continue;
      }
      // Chunk c of job `seq` is ours: the job cannot finish (nor its fields change) before we count it.
      const int64_t n = n_.load(std::memory_order_relaxed), total = total_.load(std::memory_order_relaxed);
      const int64_t begin = c * n / total, end = (c + 1) * n / total;  // chunk sizes differ by at most 1
      t_in_chunk = true;
      try {
        const c10::impl::ForceDispatchKeyGuard keys(
            c10::DispatchKeySet(c10::DispatchKeySet::RAW, included_.load(std::memory_order_relaxed)),
            c10::DispatchKeySet(c10::DispatchKeySet::RAW, excluded_.load(std::memory_order_relaxed)));
        const c10::AutoGradMode grad_mode(grad_mode_.load(std::memory_order_relaxed));
        fn_.load(std::memory_order_relaxed)(body_.load(std::memory_order_relaxed), begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      t_in_chunk = false;
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void ensure_workers(int wanted) {
    std::lock_guard<std::mutex> g(spawn_mutex_);
    while (static_cast<int>(workers_.size()) < wanted) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { worker_loop(index); });
      workers_.back().detach();
    }
  }

  void worker_loop(int index) {
    make_thread_serial();
    uint32_t last = seq_.load(std::memory_order_acquire);
    for (;;) {
      uint32_t seq;
      int spins = 0;
      while ((seq = seq_.load(std::memory_order_acquire)) == last) {
        if (++spins < kWorkerSpin) {
          GRU4REC_CPU_RELAX();
        } else {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          seq_.wait(last, std::memory_order_seq_cst);
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          spins = 0;
        }
      }
      last = seq;
      if (index < active_workers_.load(std::memory_order_relaxed)) (void)claim_and_run(seq);
    }
  }

  std::atomic<int> threads_{0};  // 0: not chosen yet
  int64_t backoff_ = 0, backoff_left_ = 0;  // jobs to run alone after stalls (the caller's, under run_mutex_)
  std::mutex run_mutex_, spawn_mutex_, error_mutex_;
  std::vector<std::thread> workers_;
  // The current job (written by the caller before it publishes `claim_`).
  std::atomic<detail::ChunkFn> fn_{nullptr};
  std::atomic<const void*> body_{nullptr};
  std::atomic<int64_t> n_{0}, total_{0};
  std::atomic<int> active_workers_{0};
  std::atomic<uint64_t> included_{0}, excluded_{0};  // the caller's thread-local dispatch key sets
  std::atomic<bool> grad_mode_{true};               // and grad mode
  std::exception_ptr error_;
  uint32_t seq_counter_ = 0;
  std::atomic<uint64_t> claim_{0};  // (job sequence number << 32) | next unclaimed chunk
  std::atomic<uint32_t> seq_{0};    // the current job's sequence number; idle workers wait on it
  std::atomic<int64_t> done_{0};    // chunks of the current job finished
  std::atomic<int> sleepers_{0};    // workers asleep in seq_.wait
};

}  // namespace

int pool_threads() { return Pool::get().threads(); }

void set_pool_threads(int n) { Pool::get().set_threads(n); }

bool in_pool_chunk() { return t_in_chunk; }

namespace detail {
void run_parallel(int64_t n, int64_t grain, ChunkFn fn, const void* body) { Pool::get().run(n, grain, fn, body); }
}  // namespace detail

}  // namespace cpu
}  // namespace gru4rec
