// Data parallelism on LibTorch's own c10d (no collectives of ours): the process group (ProcessGroupGloo on CPU,
// ProcessGroupNCCL on CUDA) joined from the launcher's environment, c10d's DDP Reducer for bucketed gradient
// all-reduce overlapped with the backward pass, small helpers (broadcast, scalar all-reduce, all-gather) and a
// local launcher (`--nproc-per-node N`) that hosts the TCPStore and spawns the ranks like torchrun.
//
// Environment (torchrun's names): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; with
// TORCHELASTIC_USE_AGENT_STORE=True (torchrun, and our launcher) the launcher hosts the TCPStore and every rank
// is a client, otherwise rank 0 hosts it. Without WORLD_SIZE the process trains alone with no process group.
//
// Reduction order (determinism): gradients are summed by the backend's all-reduce after the Reducer multiplies
// each rank's bucket by 1/world_size (exact for a power-of-two world). Gloo's ring all-reduce computes each
// element's sum once and all-gathers it, so every rank holds bit-identical gradients; with two ranks the sum is
// a + b (commutative, hence identical to the 1-process mean up to the order of the per-row sums inside each rank's
// loss). Clipping, the non-finite guard and the optimizer therefore take the same decision on every rank.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace bitforge {

/// A rank was lost (died, hung past the timeout) or the process group could not be formed. The message names
/// the rank(s), the environment variable or the timeout involved.
class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DistributedEnv {
  bool present = false;  ///< WORLD_SIZE was set (by torchrun or --nproc-per-node)
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  ///< TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the TCPStore
};
/// Reads (and validates) the launcher's environment. Throws DistributedError naming the variable.
DistributedEnv distributed_env();

/// The process-wide process group (one per process; every training stage of `bitforge run` reuses it).
class Distributed {
 public:
  /// Joins the process group described by distributed_env() the first time it is called in this process
  /// (backend: auto = NCCL on CUDA, Gloo on CPU), then returns the same group. nullptr when the process was not
  /// started by a launcher (no WORLD_SIZE).
  static std::shared_ptr<Distributed> get(const std::string& backend, double timeout_s, const torch::Device& device);
  /// The group if one was joined, else nullptr.
  static std::shared_ptr<Distributed> current();

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  bool is_main() const { return rank_ == 0; }
  const std::string& backend_name() const { return backend_name_; }
  /// This rank's device: cuda:LOCAL_RANK (modulo the visible GPUs) when training on CUDA, else the CPU.
  torch::Device device() const;
  double timeout_s() const { return timeout_s_; }

  /// In-place broadcast from rank 0 (one collective per tensor, in order).
  void broadcast(std::vector<torch::Tensor> tensors);
  /// Sum over ranks, in place.
  void all_reduce_sum(torch::Tensor& t);
  /// Mean over ranks of each value (one collective).
  std::vector<double> all_reduce_mean(const std::vector<double>& values);
  /// all_gather of equal-sized tensors: out[r] receives rank r's `in`.
  void all_gather(std::vector<torch::Tensor>& out, torch::Tensor in);
  void barrier();
  /// Mean seconds of one all-reduce of `numel` fp32 values (a flat gradient of that size), over `reps` runs.
  double time_all_reduce(int64_t numel, int reps);

  /// Rethrows `e` (caught around a step) as a DistributedError naming the lost rank(s) when a peer process is
  /// gone or the collective timed out; otherwise rethrows it unchanged.
  [[noreturn]] void rethrow_naming_peers(const std::exception& e, const std::string& where) const;

  /// c10d's DDP Reducer over `params` (buckets of bucket_mb MiB, first one 1 MiB, reverse parameter order as
  /// DDP does): after arm(), the next backward all-reduces the gradients bucket by bucket while autograd runs and
  /// leaves the world-averaged gradient in every param.grad(). Backward passes without arm() (accumulation
  /// micro-steps) only accumulate locally.
  class GradSync {
   public:
    virtual ~GradSync() = default;
    virtual void arm() = 0;
  };
  std::unique_ptr<GradSync> make_grad_sync(const std::vector<torch::Tensor>& params,
                                           const std::vector<std::string>& names, int64_t bucket_mb);

  struct Impl;
  explicit Distributed(std::unique_ptr<Impl> impl);
  ~Distributed();

 private:
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, world_ = 1;
  std::string backend_name_;
  double timeout_s_ = 300;
};

/// The built-in launcher (`bitforge ... --nproc-per-node N`): hosts a TCPStore on 127.0.0.1 (free port), starts
/// N copies of this executable with `args` and RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT/
/// TORCHELASTIC_USE_AGENT_STORE set, waits for them. When a rank fails it logs which one (pid, exit code or
/// signal), gives the others `timeout_s` + 10 s to stop on their own and then terminates them. Returns the exit
/// code of the first rank that failed, else 0.
int launch_local_ranks(int nproc, const std::vector<std::string>& args, double timeout_s);

}  // namespace bitforge
