// A fork/join pool for the inference kernels (packed and dense GEMV/GEMM, detail::for_chunks): workers poll for the
// next job for a short while (kernels::kPoolSpinMicros) and then sleep on a condition variable.
//
// Why not at::parallel_for (OpenMP): a decode step runs ~100 small products per token, one fork/join each. Under
// OMP_WAIT_POLICY=passive (bitforge's CLI default, so that idle workers never steal cores from other jobs, and the
// policy the benchmarks run under) every fork wakes a sleeping worker through the kernel: measured on the 0.74B
// model, 2 threads, int8 decode: 68.7 tokens/s passive vs 117.6 with libgomp spinning. llama.cpp's threadpool polls
// briefly before sleeping; this pool does the same, so back-to-back products hand over without a wake-up while an
// idle runtime still sleeps after kPoolSpinMicros.
//
// Contract: run_chunks(n, threads, f) calls f(c) exactly once for every c in [0, n) and returns when all calls have
// finished; chunk c may run on any of min(threads, n) threads (the caller is one of them). Calls made from a pool
// worker, from inside an OpenMP parallel region, or while another thread is using the pool run serially on the
// calling thread (same results: f(c) must not depend on the thread it runs on). threads <= 0: at::get_num_threads();
// threads > at::get_num_threads() is capped to it (as at::parallel_for was).
// Exceptions thrown by f are rethrown in the caller (the first one; the other chunks still run). A forked child starts
// with a fresh pool (pthread_atfork), so fork after use is safe.
#pragma once

#include <cstdint>

namespace bitforge::kernels {

/// How long an idle worker polls for the next job before it sleeps (microseconds).
constexpr int64_t kPoolSpinMicros = 30;

/// The untyped entry point: call(ctx, c) for every chunk c (run_chunks below wraps a callable without allocating).
void run_chunks_impl(int64_t n, int threads, void (*call)(const void* ctx, int64_t chunk), const void* ctx);

template <class F>
void run_chunks(int64_t n, int threads, const F& f) {
  run_chunks_impl(n, threads, [](const void* ctx, int64_t c) { (*static_cast<const F*>(ctx))(c); }, &f);
}

/// Workers currently alive in the pool (diagnostics and tests).
int pool_workers();

}  // namespace bitforge::kernels
