// DataLoader: batches of transformed samples from a Dataset, in a Sampler's order, built ahead
// of time on a background thread (PyTorch's DataLoader with one worker and pin_memory).
//
//   DataLoader loader(train, {.batch_size = 128, .shuffle = true, .seed = 1, .device = "cuda"});
//   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
//     Batch b;
//     while (loader.next(b)) step(b.inputs, b.targets);   // false once at the end of each epoch
//   }
//
// The loader's position (epoch, batch within the epoch) is state() / set_state(): a run that
// saves it with its checkpoint and restores it continues with exactly the batch it would have
// had next, because the order and every augmentation are functions of (seed, epoch, index).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "data/dataset.h"
#include "data/image_transform.h"
#include "data/prefetcher.h"
#include "data/sampler.h"

namespace kiln {

struct DataLoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = false;       // a RandomSampler(seed) unless a sampler is given
  uint64_t seed = 0;          // keys the shuffle and the augmentations
  bool drop_last = false;     // skip the last, short batch of an epoch
  ImageTransform transform = {};  // normalize, crop, flip, flatten
  int64_t prefetch = 2;       // batches built ahead on a background thread; 0 builds them in next()
  Device device = kCPU;       // where batches are delivered; CUDA batches are staged in pinned memory
};

struct Batch {
  Tensor inputs;                 // f32 [B, C, H, W], or [B, C*H*W] with transform.flatten
  Tensor targets;                // i64 [B]
  std::vector<int64_t> indices;  // the dataset indices of the B samples
  int64_t epoch = 0;
  int64_t index = 0;             // batch number within the epoch
};

// Shared with TokenLoader. A contiguous host tensor for a batch bound for `device`: in pinned
// memory when that is a CUDA device, so the copy is a DMA straight from it.
Tensor batch_host_tensor(const Shape& shape, DType dtype, Device device);
// `host`'s inputs and targets copied to `device` (the batch itself when that is the CPU). The
// copies are queued on kiln's stream and not waited for: the pinned buffers they read are reused
// only once an event recorded after them has completed (data/pinned_pool.h), so the CPU can go on
// queueing work ahead of the GPU.
Batch stage_to_device(Batch host, Device device);

// Where the loader stands: the next batch next() returns is batch `batch` of epoch `epoch`
// (batch == num_batches() means the epoch's end, which next() reports by returning false).
struct LoaderState {
  int64_t epoch = 0;
  int64_t batch = 0;
  friend bool operator==(const LoaderState&, const LoaderState&) = default;
};

class DataLoader {
 public:
  // `sampler` (optional) replaces the sequential or shuffled order; it must yield indices
  // into `dataset`.
  DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options,
             std::shared_ptr<const Sampler> sampler = nullptr);
  ~DataLoader();  // stops and joins the prefetch thread before the members it reads go
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch of the current epoch into `out`, or false at the end of the epoch, after
  // which the loader stands at the start of the next epoch. An exception thrown while
  // building a batch on the background thread is rethrown here; the position stays at that
  // batch, so a later call tries it again.
  bool next(Batch& out);

  int64_t num_batches() const { return num_batches_; }  // per epoch
  LoaderState state() const { return state_; }
  // Moves to `state`; batches already built ahead for the old position are dropped.
  void set_state(LoaderState state);

  const DataLoaderOptions& options() const { return options_; }
  const Dataset& dataset() const { return *dataset_; }

 private:
  // One finished unit of work from the builder: a batch or the end of an epoch.
  struct Item {
    Batch batch;
    bool end_of_epoch = false;
  };

  Batch build(LoaderState at);            // a host batch; safe on the prefetch thread
  Item produce(LoaderState& at);          // the item at `at`, then moves `at` past it

  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<const Sampler> sampler_;
  DataLoaderOptions options_;
  Shape sample_shape_;  // [C, H, W]
  int64_t num_batches_ = 0;
  LoaderState state_;

  // The order of the epoch the builder is in; only the thread that builds touches it.
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;

  // The prefetch thread and its bounded queue of finished items; it stops after an error.
  Prefetcher<Item> prefetcher_;
};

}  // namespace kiln
