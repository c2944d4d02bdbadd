// DistributedDataParallel: every rank holds the whole model, runs forward and backward on its
// own share of the batch, and all ranks average their gradients before the optimizer step, so
// that every rank takes the same step a single process would take on the global batch.
//
//   auto comm = dist::init_process_group(dist::options_from_env(), device);
//   dist::DistributedDataParallel ddp(*model, *comm);      // rank 0's weights everywhere
//   loss.backward();             // full buckets start their all-reduce during backward
//   ddp.finish_gradient_sync();  // waits for the rest; .grad now holds the global mean
//   optimizer.step();
//
// As in PyTorch, gradients are grouped into buckets of about bucket_mb, filled in reverse
// registration order (roughly the order backward produces them). Each parameter's
// post-accumulate-grad hook marks it ready; when every parameter of a bucket is ready its
// gradients are copied into one flat buffer and an asynchronous all-reduce (average) starts
// while backward goes on. Buckets are launched strictly in index order on every rank, since
// collectives must be issued in the same order everywhere.
//
// Gradient accumulation: backward passes inside a no_sync() guard only accumulate into .grad;
// the first backward outside it reduces the accumulated sum.
//
// Unused parameters: a parameter that got no gradient on a rank (in any backward since the last
// sync, no_sync ones included) contributes zeros, so one used on some ranks gets the average
// with zeros from the others, as in PyTorch. One that no rank used keeps its .grad as it was
// (undefined after zero_grad()), so optimizers skip it and weight decay leaves it alone, as in
// a single process. Each rank's used-flags ride in the last bucket's all-reduce (it starts only
// after every other bucket, when the flags are final), so this costs no extra collective; a
// rank reads them back (a device sync on CUDA) only when it left some parameter unused itself.
// Hence no find_unused_parameters switch: PyTorch's walks the autograd graph after every forward
// and adds an all-reduce and a read-back; here a bucket with a missing gradient simply starts in
// finish_gradient_sync() (without overlap), and detection costs a few bytes per step.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "nn/module.h"

namespace kiln::dist {

struct DDPOptions {
  double bucket_mb = 25.0;        // PyTorch's bucket_cap_mb
};

// Timing of the last synchronised backward, for reporting how much communication hid behind
// compute. All times in seconds.
struct OverlapStats {
  double backward_s = 0;      // first gradient ready -> finish_gradient_sync() called
  double comm_s = 0;          // first all-reduce started -> last one finished
  double exposed_s = 0;       // time finish_gradient_sync() waited for communication
  int buckets = 0;
  // The share of communication time that ran while backward was still computing.
  double overlap_fraction() const { return comm_s > 0 ? 1.0 - exposed_s / comm_s : 0.0; }
};

// Copies every parameter and buffer of `module` from rank `root` to all ranks.
void broadcast_module(nn::Module& module, Communicator& comm, int root = 0);

class DistributedDataParallel {
 public:
  // Broadcasts rank 0's parameters and buffers, then registers the hooks. (ZeRO-1 reduces the
  // gradients itself: it needs only broadcast_module.)
  // `module` and `comm` must outlive this object.
  DistributedDataParallel(nn::Module& module, Communicator& comm, DDPOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  Tensor forward(const Tensor& x) { return module_(x); }
  Tensor operator()(const Tensor& x) { return forward(x); }
  nn::Module& module() { return module_; }

  // Collective: every rank calls it once per optimizer step, after the step's last backward
  // (outside no_sync). Starts the buckets that are not started yet (parameters without a
  // gradient count as zeros, so every rank reduces the same buffers), waits for all, and writes
  // the averaged gradients back into each parameter's .grad, except for parameters that no rank
  // used since the last sync, whose .grad is left untouched. It reduces even when this rank's
  // backward reached no parameter (its loss did not depend on them): it then contributes zeros,
  // as the other ranks wait for it. (PyTorch prepares its reducer in forward() instead; kiln's
  // runner calls the module directly, and the step's end is the one point every rank shares.)
  void finish_gradient_sync();

  // While one is alive, backward passes only accumulate local gradients.
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel& ddp);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel& ddp_;
    bool previous_;
  };
  NoSyncGuard no_sync() { return NoSyncGuard(*this); }

  const OverlapStats& last_overlap() const;
  // Parameter indices (into module.parameters()) that no rank used in the last synchronised
  // window, ascending: their .grad was left as it was.
  const std::vector<int>& last_unused_parameters() const;
  // Parameter indices (into module.parameters()) of each bucket, in launch order.
  std::vector<std::vector<int>> bucket_layout() const;

  struct State;  // shared with the hooks, which may outlive this object

 private:
  nn::Module& module_;
  std::shared_ptr<State> state_;
};

}  // namespace kiln::dist
