// ZeRO stage 1 (DeepSpeed; PyTorch's ZeroRedundancyOptimizer; FSDP2's sharded optimizer state): AdamW whose
// moments are sharded across the ranks of the process group.
//
// Layout: the parameters, in the optimizer's group order, are concatenated into one flat index space of N
// elements; rank r owns [r·c, min(N, (r+1)·c)) with c = ceil(N / world). After the gradient all-reduce (c10d's
// Reducer: every rank holds the global gradient), each rank applies torch::optim::AdamW's exact update to the
// elements it owns — same formulas and order (decoupled decay p·(1 − lr·wd), m, v, bias corrections, addcdiv) —
// and the updated slices are all-gathered (c10d allgather) back into every replica. Optimizer-state bytes per rank
// = 2 · 4 · c instead of 2 · 4 · N. The model is fp32 here (bf16 is autocast on CUDA), so there are no separate
// fp32 master weights to shard.
//
// Checkpoints: gather_state() all-gathers the moments and writes them into a torch AdamW's state in the usual
// format (optimizer.safetensors, identical to zero_stage 0), load_state() takes each rank's slice of a loaded
// one: a checkpoint loads at any world size and either zero_stage.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "trainer/distributed.h"

namespace bitforge {

class ZeroAdamW {
 public:
  /// `optimizer`'s param groups give the parameters, their order and their options (lr, betas, eps, weight
  /// decay); `dist` may be null (world 1: one shard owns everything).
  ZeroAdamW(torch::optim::AdamW& optimizer, std::shared_ptr<Distributed> dist);

  /// One AdamW step on this rank's shard with the groups' current options, then the all-gather of the parameters.
  void step();

  /// Collective: fills `optimizer`'s state with the full moments on rank 0 (the one that writes checkpoints).
  /// clear_state() drops them again.
  void gather_state();
  void clear_state();
  /// Takes this rank's slice of the full state held by `optimizer` (from load_checkpoint), then clears it.
  void load_state();

  /// Bytes of optimizer state this rank holds (the two moments of its shard).
  int64_t state_bytes() const;
  /// Bytes the unsharded AdamW would hold (2 · 4 · N).
  int64_t full_state_bytes() const;

 private:
  struct Slice {
    size_t param;              ///< index into params_
    int64_t begin, end;        ///< element range inside the flattened parameter
    int64_t local;             ///< offset in this rank's shard buffers
  };
  torch::optim::AdamW& opt_;
  std::shared_ptr<Distributed> dist_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> group_of_;
  std::vector<int64_t> offset_;  ///< flat offset of each parameter
  std::vector<int64_t> steps_;   ///< AdamW step count per parameter
  int64_t total_ = 0, chunk_ = 0, lo_ = 0, hi_ = 0;
  int world_ = 1, rank_ = 0;
  std::vector<Slice> mine_;
  torch::Tensor exp_avg_, exp_avg_sq_;  ///< [chunk_] fp32 (only [0, hi_ − lo_) used)
  std::vector<Slice> slices_of_rank(int r) const;
  std::vector<torch::Tensor> gather_chunks(const torch::Tensor& send);
};

}  // namespace bitforge
