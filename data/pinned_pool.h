// PinnedBufferPool: pinned host buffers for batches bound for a GPU, reused instead of freed.
//
// A batch is built in pinned memory and copied to the GPU with an asynchronous copy on kiln's
// stream. The buffer must stay untouched until that copy has run, but the caller should not wait
// for it (that would stop the CPU from queueing the next steps ahead of the GPU), and giving the
// buffer back to the driver (cudaFreeHost) would synchronize the device as well. So, as in
// PyTorch's CachingHostAllocator:
//   - after the copy, record_use() records an event on the stream that reads the buffer;
//   - a freed buffer goes back to the pool and is handed out again only once its events have
//     completed (a non-blocking query);
//   - when kMaxPending freed buffers that would fit a request are all still being copied from,
//     allocate() waits for the oldest of them instead of pinning yet more memory. That bounds
//     how far the pool grows when the CPU runs far ahead of the GPU.
// Buffers are never returned to the driver while the pool lives.
//
// The bookkeeping is plain C++; the CUDA runtime is reached only through PinnedMemory, so tests
// drive the pool with a fake (data/dataloader.cpp provides the real one in CUDA builds).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"
#include "core/caching_allocator.h"  // StreamId, EventId

namespace kiln {

// What the pool asks of the CUDA runtime.
struct PinnedMemory {
  virtual ~PinnedMemory() = default;
  virtual void* malloc(std::size_t bytes) = 0;  // cudaMallocHost; throws when it fails
  virtual void free(void* ptr) = 0;             // cudaFreeHost
  virtual EventId record_event(int device, StreamId stream) = 0;  // after the work on `stream`
  virtual bool event_done(EventId event) = 0;   // cudaEventQuery, non-blocking
  virtual void wait_event(EventId event) = 0;   // cudaEventSynchronize
  virtual void destroy_event(EventId event) = 0;
};

class PinnedBufferPool final : public Allocator {
 public:
  // Freed buffers still being copied from, beyond which allocate() waits instead of pinning more.
  static constexpr int kMaxPending = 8;

  explicit PinnedBufferPool(PinnedMemory& memory) : memory_(memory) {}  // `memory` must outlive it
  // Waits for the pending copies and frees the buffers not in use (those in use are leaked).
  ~PinnedBufferPool() override;
  PinnedBufferPool(const PinnedBufferPool&) = delete;
  PinnedBufferPool& operator=(const PinnedBufferPool&) = delete;

  // A free buffer of at least `bytes` whose copies are done (the smallest such), else a new one.
  void* allocate(std::size_t bytes) override;
  // Back to the pool; reused once the events recorded for it have completed.
  void deallocate(void* ptr) override;
  // Work queued on `stream` of cuda:`device` reads `ptr`, a buffer of this pool in use. Returns
  // false (and records nothing) for memory that is not the start of one of this pool's buffers.
  bool record_use(void* ptr, int device, StreamId stream);

  struct Stats {
    std::size_t buffers = 0;        // pinned buffers held, in use or not
    std::size_t in_use = 0;
    std::size_t pending = 0;        // free, but a copy from them may still be running
    std::size_t pinned_bytes = 0;
    std::uint64_t waits = 0;        // allocate() calls that had to wait for a copy
  };
  Stats stats();

 private:
  struct Buffer {
    std::size_t bytes = 0;
    bool in_use = false;
    std::uint64_t freed_at = 0;     // order of deallocate() calls: the oldest pending goes first
    std::vector<EventId> events;    // copies that read it and may not have finished
  };

  // Destroys the completed events of `buffer`; true when none is left.
  bool copies_done(Buffer& buffer);

  PinnedMemory& memory_;
  std::mutex mutex_;
  std::unordered_map<void*, Buffer> buffers_;
  std::uint64_t frees_ = 0;
  std::uint64_t waits_ = 0;
};

}  // namespace kiln
