// The kernels' fork/join pool; contract and reasons in kernels/thread_pool.h.
#include "kernels/thread_pool.h"

#include <ATen/Parallel.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BF_CPU_RELAX() _mm_pause()
#else
#define BF_CPU_RELAX() std::this_thread::yield()
#endif

namespace bitforge::kernels {
namespace {

/// One job, on the caller's stack: every worker acknowledges it (finished) before the caller returns, so no worker
/// touches it afterwards.
struct Job {
  void (*call)(const void*, int64_t) = nullptr;
  const void* ctx = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int> finished{0};
  std::mutex error_mu;
  std::exception_ptr error;

  void work() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      try {
        call(ctx, c);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu);
        if (!error) error = std::current_exception();
      }
    }
  }
};

thread_local bool tls_in_worker = false;

class Pool {
 public:
  ~Pool() { resize(0); }

  /// Runs `job` on the caller and `workers_` threads. Caller holds run_mu_.
  void run(Job& job, int workers) {
    if (workers != static_cast<int>(threads_.size())) resize(workers);
    job_.store(&job, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(sleep_mu_);  // a worker between its last poll and wait() sees the new generation
      generation_.fetch_add(1, std::memory_order_acq_rel);
    }
    sleep_cv_.notify_all();
    job.work();
    const int w = static_cast<int>(threads_.size());
    for (int spins = 0; job.finished.load(std::memory_order_acquire) < w; ++spins) {
      if (spins < 1 << 16) BF_CPU_RELAX();
      else std::this_thread::yield();
    }
    job_.store(nullptr, std::memory_order_relaxed);
  }

  std::mutex run_mu;

  int size() const { return static_cast<int>(threads_.size()); }

 private:
  void resize(int workers) {
    if (!threads_.empty()) {
      {
        std::lock_guard<std::mutex> lk(sleep_mu_);
        stop_ = true;
        generation_.fetch_add(1, std::memory_order_acq_rel);
      }
      sleep_cv_.notify_all();
      for (auto& t : threads_) t.join();
      threads_.clear();
      stop_ = false;
    }
    // A new worker starts from the generation before the caller publishes its job (read here, not in the thread:
    // the thread may start after the publication and would then wait for the next job forever).
    const uint64_t g = generation_.load(std::memory_order_acquire);
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, g] { loop(g); });
  }

  void loop(uint64_t seen) {
    tls_in_worker = true;
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        BF_CPU_RELAX();
        if ((spins & 255) == 255 &&
            std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kPoolSpinMicros)) {
          std::unique_lock<std::mutex> lk(sleep_mu_);
          sleep_cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (stop_) return;
      Job* job = job_.load(std::memory_order_acquire);
      job->work();
      job->finished.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<Job*> job_{nullptr};
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
  bool stop_ = false;  // written under sleep_mu_ before the generation bump that workers read it after
};

Pool* g_pool = nullptr;

/// A forked child has none of the parent's workers (and perhaps a lock the parent held): it gets a fresh pool, the
/// parent's is leaked in the child (destroying it would join threads that do not exist there).
void reset_pool_in_child() { g_pool = new Pool(); }

Pool& pool() {
  static const bool init = [] {
    g_pool = new Pool();  // never destroyed: workers may outlive static destruction order at exit
    pthread_atfork(nullptr, nullptr, reset_pool_in_child);
    return true;
  }();
  (void)init;
  return *g_pool;
}

}  // namespace

void run_chunks_impl(int64_t n, int threads, void (*call)(const void*, int64_t), const void* ctx) {
  if (n <= 0) return;
  // At most at::get_num_threads() (bitforge's -t sets it), as with at::parallel_for before this pool.
  threads = threads <= 0 ? at::get_num_threads() : std::min(threads, at::get_num_threads());
  // The pool keeps threads - 1 workers whatever n is (resizing per call would churn threads); with n < threads
  // the spare workers find no chunk and only acknowledge the job.
  const int t = std::max(threads, 1);
  Pool& p = pool();
  std::unique_lock<std::mutex> lk(p.run_mu, std::defer_lock);
  if (t <= 1 || n <= 1 || tls_in_worker || at::in_parallel_region() || !lk.try_lock()) {
    for (int64_t c = 0; c < n; ++c) call(ctx, c);
    return;
  }
  Job job;
  job.call = call;
  job.ctx = ctx;
  job.n = n;
  p.run(job, t - 1);
  if (job.error) std::rethrow_exception(job.error);
}

int pool_workers() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.run_mu);
  return p.size();
}

}  // namespace bitforge::kernels
