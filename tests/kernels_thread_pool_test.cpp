// kernels/thread_pool.h: every chunk runs exactly once, on up to `threads` threads; nested calls, calls from inside
// an OpenMP region and concurrent callers run serially and still cover every chunk; exceptions reach the caller;
// the pool survives many back-to-back jobs and changes of thread count (the decode loop's pattern).
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "kernels/thread_pool.h"

using bitforge::kernels::run_chunks;

// Thread counts above at::get_num_threads() are capped to it: the tests that need more raise it first.
struct NumThreads {
  explicit NumThreads(int n) : saved(at::get_num_threads()) { at::set_num_threads(n); }
  ~NumThreads() { at::set_num_threads(saved); }
  int saved;
};

TEST(ThreadPool, EveryChunkExactlyOnce) {
  NumThreads nt(8);
  for (int threads : {1, 2, 3, 8}) {
    for (int64_t n : {1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      run_chunks(n, threads, [&](int64_t c) { hits[c].fetch_add(1); });
      for (int64_t c = 0; c < n; ++c) ASSERT_EQ(hits[c].load(), 1) << "threads " << threads << " n " << n << " chunk " << c;
    }
  }
}

TEST(ThreadPool, UsesSeveralThreadsAndTheCaller) {
  NumThreads nt(3);
  std::mutex mu;
  std::set<std::thread::id> ids;
  run_chunks(64, 3, [&](int64_t) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::lock_guard<std::mutex> lk(mu);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_GE(ids.size(), 2u);
  EXPECT_LE(ids.size(), 3u);
  EXPECT_EQ(bitforge::kernels::pool_workers(), 2);
}

TEST(ThreadPool, ThreadsAboveTheLibrarySettingAreCapped) {
  NumThreads nt(2);
  run_chunks(8, 6, [](int64_t) {});
  EXPECT_EQ(bitforge::kernels::pool_workers(), 1);
}

TEST(ThreadPool, NestedCallsRunSeriallyAndCoverEverything) {
  std::atomic<int64_t> sum{0};
  run_chunks(8, 2, [&](int64_t c) { run_chunks(10, 2, [&](int64_t d) { sum.fetch_add(c * 10 + d); }); });
  EXPECT_EQ(sum.load(), 79 * 80 / 2);
}

TEST(ThreadPool, InsideAnOpenMpRegionRunsSerially) {
  std::atomic<int64_t> count{0};
  at::parallel_for(0, 4, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) run_chunks(16, 2, [&](int64_t) { count.fetch_add(1); });
  });
  EXPECT_EQ(count.load(), 64);
}

TEST(ThreadPool, ConcurrentCallersAllFinish) {
  std::atomic<int64_t> count{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i)
    callers.emplace_back([&] {
      for (int k = 0; k < 200; ++k) run_chunks(5, 2, [&](int64_t) { count.fetch_add(1); });
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(count.load(), 4 * 200 * 5);
}

TEST(ThreadPool, ExceptionsReachTheCallerAndOtherChunksStillRun) {
  std::atomic<int> ran{0};
  EXPECT_THROW(run_chunks(16, 2,
                          [&](int64_t c) {
                            ran.fetch_add(1);
                            if (c == 3) throw std::runtime_error("chunk 3");
                          }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 16);
  std::atomic<int> after{0};
  run_chunks(16, 2, [&](int64_t) { after.fetch_add(1); });  // the pool still works
  EXPECT_EQ(after.load(), 16);
}

TEST(ThreadPool, ManyBackToBackJobsAndThreadCountChanges) {
  NumThreads nt(3);
  int64_t total = 0;
  for (int k = 0; k < 20000; ++k) {
    const int threads = (k % 1000 < 500) ? 2 : 3;
    std::atomic<int64_t> s{0};
    run_chunks(3, threads, [&](int64_t c) { s.fetch_add(c + 1); });
    total += s.load();
  }
  EXPECT_EQ(total, 20000 * 6);
}

TEST(ThreadPool, WorkersSleepWhenIdleAndWakeForTheNextJob) {
  std::atomic<int> count{0};
  run_chunks(4, 2, [&](int64_t) { count.fetch_add(1); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // far beyond kPoolSpinMicros: the worker sleeps
  run_chunks(4, 2, [&](int64_t) { count.fetch_add(1); });
  EXPECT_EQ(count.load(), 8);
}

TEST(ThreadPool, AForkedChildGetsAWorkingPool) {
  NumThreads nt(2);
  std::atomic<int> count{0};
  run_chunks(4, 2, [&](int64_t) { count.fetch_add(1); });  // the parent's pool has a worker now
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);  // a child stuck waiting for workers it does not have dies of SIGALRM: a failure, not a hang
    std::atomic<int> c{0};
    run_chunks(16, 2, [&](int64_t) { c.fetch_add(1); });  // would wait forever for the parent's worker
    _exit(c.load() == 16 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
