// The caching allocator on real CUDA devices: RawDeviceMemory over the CUDA runtime, and one
// CachingAllocator per device for the whole process. This header is plain C++ so that code built
// without nvcc can call it; the implementation is compiled only when CUDA is enabled.
#pragma once

#include <cstddef>

#include "core/caching_allocator.h"

namespace kiln {

// cudaMalloc/cudaFree and stream events on one device. Every call switches to that device and
// back, so callers need not care which device is current.
class CudaDeviceMemory final : public RawDeviceMemory {
 public:
  explicit CudaDeviceMemory(int device);

  void* malloc(std::size_t bytes) override;  // nullptr on cudaErrorMemoryAllocation
  void free(void* ptr) override;
  EventId record_event(StreamId stream) override;
  bool event_done(EventId event) override;
  void destroy_event(EventId event) override;

 private:
  int device_;
};

// The allocator of device `device` ("cuda:N"), made on first use. It lives until the process exits
// and is never destroyed: tensors freed by other static destructors must still find it.
CachingAllocator& cuda_caching_allocator(int device);

void cuda_empty_cache(int device);
AllocatorStats cuda_memory_stats(int device);

}  // namespace kiln
