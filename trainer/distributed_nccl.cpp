// ProcessGroupNCCL for train.distributed_backend nccl (auto on CUDA). Compiled only in CUDA builds that find the
// NCCL headers of the nvidia-nccl wheel (trainer/CMakeLists.txt defines BITFORGE_WITH_NCCL); the symbols live in
// libtorch_cuda.so.
#if defined(BITFORGE_WITH_NCCL)
#ifndef USE_DISTRIBUTED
#define USE_DISTRIBUTED 1
#endif
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

namespace bitforge {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                     std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
}

}  // namespace bitforge
#endif
