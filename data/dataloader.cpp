#include "data/dataloader.h"

#include <algorithm>
#include <utility>

#include "core/allocator.h"
#include "core/storage.h"

#ifdef KILN_WITH_CUDA
#include "core/cuda_context.h"
#include "data/pinned_pool.h"
#endif

namespace kiln {

#ifdef KILN_WITH_CUDA
namespace {

// The CUDA runtime behind the pool of pinned batch buffers.
class CudaPinnedMemory final : public PinnedMemory {
 public:
  void* malloc(std::size_t bytes) override {
    void* ptr = nullptr;
    KILN_CUDA_CHECK(cudaMallocHost(&ptr, bytes));
    return ptr;
  }
  void free(void* ptr) override { KILN_CUDA_CHECK(cudaFreeHost(ptr)); }
  EventId record_event(int device, StreamId stream) override {
    cuda::DeviceGuard guard(device);
    cudaEvent_t event = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    const cudaError_t err = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(stream));
    if (err != cudaSuccess) cudaEventDestroy(event);
    KILN_CUDA_CHECK(err);
    return reinterpret_cast<EventId>(event);
  }
  bool event_done(EventId event) override {
    const cudaError_t err = cudaEventQuery(reinterpret_cast<cudaEvent_t>(event));
    if (err == cudaErrorNotReady) {
      (void)cudaGetLastError();  // "not ready" is an answer, not an error
      return false;
    }
    KILN_CUDA_CHECK(err);
    return true;
  }
  void wait_event(EventId event) override {
    KILN_CUDA_CHECK(cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(event)));
  }
  void destroy_event(EventId event) override {
    KILN_CUDA_CHECK(cudaEventDestroy(reinterpret_cast<cudaEvent_t>(event)));
  }
};

// One pool for the process, shared by every loader. Leaked on purpose: batches freed by exit-time
// destructors must still find it, and the CUDA runtime may be gone by then.
PinnedBufferPool& pinned_batch_pool() {
  static auto* pool = new PinnedBufferPool(*new CudaPinnedMemory);
  return *pool;
}

}  // namespace
#endif

// Pinned host memory for batches bound for a GPU, so the copy is a DMA straight from it instead
// of a staged copy through pageable memory. The buffers come from a pool that reuses them once
// their copies are done (data/pinned_pool.h).
Tensor batch_host_tensor(const Shape& shape, DType dtype, Device device) {
  Allocator* allocator = cpu_allocator();
#ifdef KILN_WITH_CUDA
  if (device.is_cuda() && cuda_device_count() > 0) allocator = &pinned_batch_pool();
#endif
  const auto nbytes = static_cast<std::size_t>(shape_numel(shape)) * element_size(dtype);
  auto storage = std::make_shared<Storage>(nbytes, kCPU, allocator);
  return Tensor::make_view(std::move(storage), shape, contiguous_strides(shape), 0, dtype);
}

Batch stage_to_device(Batch host, Device device) {
  if (device.is_cpu()) return host;
  Batch b = host;
  b.inputs = host.inputs.to(device);
  b.targets = host.targets.to(device);
#ifdef KILN_WITH_CUDA
  // From pinned memory the copies are asynchronous, and `host`'s buffers go back to the pool
  // when it goes out of scope here. Nothing waits for the copies: an event recorded after them
  // keeps the pool from handing the buffers out again before they have run. (record_use ignores
  // pageable memory: a copy from it has read the source before cudaMemcpyAsync returns.)
  const auto stream = reinterpret_cast<StreamId>(cuda::current_stream(device.index));
  for (const Tensor* t : {&host.inputs, &host.targets}) {
    pinned_batch_pool().record_use(t->storage()->data(), device.index, stream);
  }
#endif
  return b;
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options,
                       std::shared_ptr<const Sampler> sampler)
    : dataset_(std::move(dataset)),
      sampler_(std::move(sampler)),
      options_(std::move(options)),
      prefetcher_(options_.prefetch) {
  KILN_CHECK(dataset_, "DataLoader: no dataset");
  KILN_CHECK(options_.batch_size > 0, "DataLoader: batch_size must be positive, got ", options_.batch_size);
  KILN_CHECK(options_.prefetch >= 0, "DataLoader: prefetch must be >= 0, got ", options_.prefetch);
  KILN_CHECK(!(sampler_ && options_.shuffle),
             "DataLoader: shuffle and a sampler exclude each other (the sampler decides the order)");
  const Device dev = options_.device;
  KILN_CHECK(dev.is_cpu() || dev.index < cuda_device_count(), "DataLoader: device ", dev,
             " is not available (", cuda_device_count(), " CUDA devices visible)");
  sample_shape_ = dataset_->sample_shape();
  options_.transform.validate(sample_shape_);

  const int64_t n = dataset_->size();
  if (!sampler_) {
    if (options_.shuffle) sampler_ = std::make_shared<RandomSampler>(n, options_.seed);
    else sampler_ = std::make_shared<SequentialSampler>(n);
  }
  const int64_t samples = sampler_->size();
  const int64_t bs = options_.batch_size;
  num_batches_ = options_.drop_last ? samples / bs : (samples + bs - 1) / bs;
  KILN_CHECK(num_batches_ > 0, "DataLoader: no batches: ", samples, " samples per epoch",
             options_.drop_last ? " with drop_last and batch_size " : " and batch_size ", bs);
}

DataLoader::~DataLoader() { prefetcher_.stop(); }

Batch DataLoader::build(LoaderState at) {
  if (order_epoch_ != at.epoch) {
    order_ = sampler_->indices(at.epoch);
    KILN_CHECK(static_cast<int64_t>(order_.size()) == sampler_->size(), "DataLoader: sampler gave ",
               order_.size(), " indices for epoch ", at.epoch, ", its size() says ", sampler_->size());
    order_epoch_ = at.epoch;
  }
  const int64_t start = at.batch * options_.batch_size;
  const int64_t count = std::min(options_.batch_size, static_cast<int64_t>(order_.size()) - start);
  const int64_t C = sample_shape_[0], H = sample_shape_[1], W = sample_shape_[2];
  const int64_t per_sample = C * H * W;

  const Shape input_shape = options_.transform.flatten ? Shape{count, per_sample} : Shape{count, C, H, W};
  Batch b;
  b.inputs = batch_host_tensor(input_shape, DType::f32, options_.device);
  b.targets = batch_host_tensor({count}, DType::i64, options_.device);
  b.indices.assign(order_.begin() + start, order_.begin() + start + count);
  b.epoch = at.epoch;
  b.index = at.batch;

  std::vector<uint8_t> pixels(static_cast<std::size_t>(per_sample));
  float* inputs = b.inputs.data<float>();
  int64_t* targets = b.targets.data<int64_t>();
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = b.indices[j];
    KILN_CHECK(i >= 0 && i < dataset_->size(), "DataLoader: sampler gave index ", i, " outside the dataset's [0, ",
               dataset_->size(), ")");
    targets[j] = dataset_->get(i, pixels.data());
    const AugmentChoice choice = augment_choice(options_.transform, options_.seed, at.epoch, i);
    apply_transform(options_.transform, sample_shape_, pixels.data(), choice, inputs + j * per_sample);
  }
  return b;
}

DataLoader::Item DataLoader::produce(LoaderState& at) {
  Item item;
  if (at.batch >= num_batches_) {
    item.end_of_epoch = true;
    at = {at.epoch + 1, 0};
  } else {
    try {
      item.batch = build(at);
    } catch (const Error& e) {
      // Say where in the epoch it happened; the thread that saw it is not the one that reports it.
      throw Error(detail::str_cat("DataLoader: building batch ", at.batch, " of epoch ", at.epoch, ": ", e.what()));
    }
    ++at.batch;
  }
  return item;
}

bool DataLoader::next(Batch& out) {
  Item item;
  if (options_.prefetch == 0) {
    LoaderState at = state_;
    item = produce(at);  // a throw leaves state_ where it was
  } else {
    // Epoch ends do not stop the thread; an error does, and the next call restarts it at state_.
    prefetcher_.start([this, at = state_](Item& built) mutable {
      built = produce(at);
      return true;
    });
    item = prefetcher_.pop();
  }
  if (item.end_of_epoch) {
    state_ = {state_.epoch + 1, 0};
    return false;
  }
  out = stage_to_device(std::move(item.batch), options_.device);
  state_ = {out.epoch, out.index + 1};
  return true;
}

void DataLoader::set_state(LoaderState state) {
  KILN_CHECK(state.epoch >= 0 && state.batch >= 0 && state.batch <= num_batches_, "DataLoader::set_state: epoch ",
             state.epoch, " batch ", state.batch, " is not a position (", num_batches_, " batches per epoch)");
  prefetcher_.stop();  // drops batches built for the old position
  state_ = state;
}

}  // namespace kiln
