// Collective communication between the processes (ranks) of one training job, in the spirit of
// torch.distributed's ProcessGroup: every rank calls the same collectives in the same order.
// Backends: "gloo" (CPU tensors, TCP; Debian's libgloo) and "nccl" (CUDA tensors, its own stream).
// Ranks find each other through a TCP key-value store served by rank 0 (dist/store.h), as torchrun does.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace kiln::dist {

enum class ReduceOp : uint8_t { sum, avg, max };
// "sum", "avg", "max": for error messages.
inline const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
  }
  return "?";
}

// A collective that may still be running. wait() returns once its result may be used by the
// caller (for NCCL: ordered before later work on the current CUDA stream) or throws kiln::Error
// naming the collective and the rank when it failed or timed out.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;  // "gloo" or "nccl"
  // The same id on every rank of one job (rank 0 makes it at the rendezvous): for run
  // directories and logs that must agree across ranks.
  virtual std::string run_id() const { return {}; }

  // In place on a contiguous tensor; every rank passes the same shape and dtype.
  virtual std::shared_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op = ReduceOp::sum) = 0;
  void all_reduce(Tensor& t, ReduceOp op = ReduceOp::sum) { all_reduce_async(t, op)->wait(); }
  // t on `root` is copied into t on every other rank.
  virtual void broadcast(Tensor& t, int root = 0) = 0;
  // out (world_size * in.numel() elements) = every rank's `in`, concatenated in rank order.
  virtual void all_gather(Tensor& out, const Tensor& in) = 0;
  // in (world_size * out.numel() elements) is reduced over ranks; rank r keeps chunk r in out.
  virtual void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op = ReduceOp::sum) = 0;
  virtual void barrier() = 0;
};

struct InitOptions {
  std::string backend = "auto";  // auto: nccl when the device is CUDA and NCCL is built, else gloo
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};  // rendezvous and every collective
};

// Options from torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
// and KILN_DIST_TIMEOUT_S. Without WORLD_SIZE: a single process (rank 0 of 1).
InitOptions options_from_env();

// Rendezvous through the store, agree on world size and run id, create the backend.
// Throws kiln::Error naming the master address/port, the rank and the timeout on failure.
std::unique_ptr<Communicator> init_process_group(const InitOptions& options, Device device);

}  // namespace kiln::dist
