// The runner's data-parallel side, in one place so that tools/trainer.cpp stays a single-process
// loop with a few calls into it. With WORLD_SIZE > 1 in the environment (kiln launch, or
// torchrun-style variables on each node) it starts a process group; otherwise every call is a
// no-op that does what one process would do.
//
// What the trainer gets:
//   - rank/world_size for the data (each rank reads its own share; data.batch_size is per rank,
//     as in PyTorch, so the global batch is data.batch_size * grad_accum_steps * world_size)
//   - cuda:LOCAL_RANK as the device when the config asks for a GPU
//   - rank 0's run directory on every rank; only rank 0 writes logs, metrics and checkpoints
//   - DDP (bucketed all-reduce overlapped with backward, no_sync for accumulation micro-steps)
//     or, with dist.zero: 1, ZeRO-1 (optimizer state sharded across ranks; with f16 the loss
//     scaler checks each rank's gradient slice and the ranks agree on skipping a step)
//   - a stop flag agreed by all ranks every step, so SIGINT stops every rank at the same step
//     and the checkpoint rank 0 writes is consistent.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/ddp.h"
#include "dist/zero.h"
#include "nn/module.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"
#include "tools/config.h"
#include "tools/run_dir.h"

namespace kiln {

class DistributedRun {
 public:
  // Reads the environment and the dist.* keys; joins the process group when WORLD_SIZE > 1.
  // `device`: the configured device; a CUDA device becomes cuda:LOCAL_RANK.
  DistributedRun(const Config& cfg, Device device);
  ~DistributedRun();

  bool enabled() const { return comm_ != nullptr; }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int world_size() const { return comm_ ? comm_->world_size() : 1; }
  bool is_main() const { return rank() == 0; }
  Device device() const { return device_; }
  // The process group (null in a single process): for collectives of the data, e.g. evaluation.
  dist::Communicator* communicator() const { return comm_.get(); }
  std::string describe() const;  // "2 ranks, gloo, DDP (25 MB buckets)"

  // `make` runs on rank 0; every rank gets its result.
  std::filesystem::path shared_path(const std::function<std::filesystem::path()>& make);

  // After the model and its optimizer are built: rank 0's weights on every rank, and the
  // gradient synchronisation (DDP or ZeRO-1). `log` (rank 0's) gets the memory report.
  void wrap(nn::Module& model, Optimizer& optimizer, RunLog& log);

  // The optimizer a schedule sets lr on: the sharded one under ZeRO-1.
  Optimizer& scheduled(Optimizer& optimizer);
  // Held around a micro-step's backward: all but the last only accumulate locally.
  std::unique_ptr<dist::DistributedDataParallel::NoSyncGuard> micro_step(bool last);
  // After the step's last backward: gradients averaged over ranks (DDP) or reduce-scattered.
  void sync_gradients();
  // scaler.unscale_ of the gradients the step uses: this rank's slice under ZeRO-1.
  void unscale_(Optimizer& optimizer, GradScaler& scaler);
  // clip_grad_norm_ over the global gradients (from the slices under ZeRO-1).
  double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
  // The optimizer step through the scaler: skipped when a gradient overflowed (under ZeRO-1, on
  // any rank's slice, so that every rank skips together).
  void step(Optimizer& optimizer, GradScaler& scaler);

  // Checkpoint contents: the unsharded optimizer state (gathered under ZeRO-1: collective).
  NamedTensors optimizer_state(Optimizer& optimizer);
  void load_optimizer_state(Optimizer& optimizer, const NamedTensors& state);
  // Runs `write` on rank 0, then waits until every rank is there.
  std::filesystem::path on_main(const std::function<std::filesystem::path()>& write);

  // Collective: true when any rank says so (the stop flag).
  bool any(bool flag);
  // Collective: the mean over ranks.
  double mean(double value);
  // dist/* metrics of the last step (overlap of communication with backward).
  void add_metrics(nlohmann::json& values) const;

 private:
  Device device_;
  int64_t zero_ = 0;
  double bucket_mb_ = 25;
  OptimizerOptions optimizer_options_;
  std::unique_ptr<dist::Communicator> comm_;
  std::unique_ptr<dist::DistributedDataParallel> ddp_;
  std::unique_ptr<dist::ZeroRedundancyOptimizer> zero_opt_;
  RunLog* log_ = nullptr;
  bool memory_reported_ = false;
};

}  // namespace kiln
