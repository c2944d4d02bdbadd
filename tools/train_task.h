// What the runner trains on, behind one interface so the loop (tools/trainer.cpp) is the same
// for both: image classification (data.dataset fashion_mnist/mnist: DataLoader, cross_entropy,
// test loss and accuracy) and next-token prediction (data.dataset tokens: TokenLoader over
// token shards, a gpt, fused_cross_entropy, val loss and perplexity).
//
// A task hands out one batch per optimizer step: data.batch_size * train.grad_accum_steps rows,
// which the loop splits into micro-batches. So the data of step k does not depend on how it is
// split, and N micro-batches of B give the same step as one batch of N*B.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/device.h"
#include "data/dataloader.h"
#include "models/registry.h"
#include "nn/module.h"
#include "tools/config.h"

namespace kiln::dist {
class Communicator;
}

namespace kiln {

struct Evaluation {
  double loss = 0;
  double accuracy = -1;    // images only; -1 when not measured
  int64_t items = 0;       // images, or tokens
  int64_t local_items = 0; // of those, evaluated by this rank (all of them without a communicator)
  nlohmann::json metrics;  // "eval/loss", "eval/accuracy" or "eval/perplexity"
  std::string summary;     // "test loss 0.4123, test accuracy 85.10% (10000 images)"
};

class TrainTask {
 public:
  virtual ~TrainTask() = default;

  // The task data.dataset asks for. `training` false builds only what evaluation needs.
  // rank/world_size: data parallelism; each rank trains on its own share of every epoch
  // (DistributedSampler) or of the token windows, data.batch_size rows per micro-batch.
  // comm (the process group of those ranks, or null): evaluate() then splits the evaluation
  // batches across its ranks and all-reduces the sums, so every rank must call it together.
  static std::unique_ptr<TrainTask> create(const Config& cfg, Device device, bool training, int rank = 0,
                                           int world_size = 1, dist::Communicator* comm = nullptr);

  // Everything model.* says, plus the input geometry of the data.
  virtual models::ModelSpec model_spec() const = 0;
  // After the model is built, before it moves to the device: checks that model and data fit
  // together and applies model.init_from.
  virtual void prepare_model(nn::Module& model) = 0;

  // The batch of the next optimizer step (train.grad_accum_steps micro-batches of rows).
  virtual Batch next_batch() = 0;
  // Mean loss over `batch` (any number of rows), as an f32 scalar.
  virtual Tensor loss(nn::Module& model, const Batch& batch) const = 0;
  // Tokens in `batch` (0 for images): the throughput LM runs report.
  virtual int64_t tokens(const Batch& batch) const = 0;
  // One evaluation pass, in eval mode and without autograd; restores the model's mode. With a
  // communicator each rank runs whole batches k = rank, rank + world_size, ... of the
  // single-process pass (none dropped or repeated) and every rank returns the evaluation of the
  // whole split: the single-process one up to the order of the f64 sums. A collective: every
  // rank calls it, also one whose share is empty.
  virtual Evaluation evaluate(nn::Module& model) = 0;

  // Where the training data stands, for checkpoints: next_batch() continues exactly from it.
  virtual nlohmann::json data_state() const = 0;
  virtual void load_data_state(const nlohmann::json& state) = 0;
  virtual std::string describe() const = 0;  // "fashion_mnist (60000 images)"
};

// The ModelSpec of model.* for inputs of shape [C, H, W] (ignored by a gpt).
models::ModelSpec model_spec_from(const Config& cfg, const Shape& chw);

}  // namespace kiln
