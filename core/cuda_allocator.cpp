#include "core/cuda_allocator.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>

#include "core/cuda_check.h"

namespace kiln {

namespace {

// Makes `device` current for one scope and restores the previous device after.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    KILN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) KILN_CUDA_CHECK(cudaSetDevice(device));
  }
  // Unchecked: a destructor must not throw, and setting back a device that was valid a moment ago
  // does not fail in practice.
  ~CudaDeviceGuard() { cudaSetDevice(previous_); }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

cudaEvent_t to_event(EventId event) { return reinterpret_cast<cudaEvent_t>(event); }

}  // namespace

CudaDeviceMemory::CudaDeviceMemory(int device) : device_(device) {}

void* CudaDeviceMemory::malloc(std::size_t bytes) {
  CudaDeviceGuard guard(device_);
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err == cudaErrorMemoryAllocation) {
    // Out of memory is the caching allocator's to handle (empty the cache, retry, report); clear
    // the error so that the next unrelated check does not report it.
    (void)cudaGetLastError();
    return nullptr;
  }
  if (err != cudaSuccess) {
    KILN_FAIL("CUDA error: cudaMalloc of ", bytes, " bytes on cuda:", device_,
              " failed: ", cudaGetErrorString(err));
  }
  return ptr;
}

void CudaDeviceMemory::free(void* ptr) {
  CudaDeviceGuard guard(device_);
  KILN_CUDA_CHECK(cudaFree(ptr));
}

EventId CudaDeviceMemory::record_event(StreamId stream) {
  CudaDeviceGuard guard(device_);
  cudaEvent_t event = nullptr;
  // Timing is never read, and events without it are cheaper to record and query.
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t err = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) {
    cudaEventDestroy(event);
    KILN_FAIL("CUDA error: cudaEventRecord on stream ", stream, " (cuda:", device_,
              ") failed: ", cudaGetErrorString(err));
  }
  return reinterpret_cast<EventId>(event);
}

bool CudaDeviceMemory::event_done(EventId event) {
  CudaDeviceGuard guard(device_);
  const cudaError_t err = cudaEventQuery(to_event(event));
  if (err == cudaErrorNotReady) {
    // "Not ready" is an answer, not an error; clear it as PyTorch does.
    (void)cudaGetLastError();
    return false;
  }
  KILN_CUDA_CHECK(err);
  return true;
}

void CudaDeviceMemory::destroy_event(EventId event) {
  CudaDeviceGuard guard(device_);
  KILN_CUDA_CHECK(cudaEventDestroy(to_event(event)));
}

CachingAllocator& cuda_caching_allocator(int device) {
  // Leaked on purpose, with their mutex, so that no exit-time destructor runs before the last
  // tensor is freed.
  static auto* mutex = new std::mutex;
  static auto* allocators = new std::map<int, CachingAllocator*>;

  std::lock_guard<std::mutex> lock(*mutex);
  auto it = allocators->find(device);
  if (it != allocators->end()) return *it->second;

  int count = 0;
  KILN_CUDA_CHECK(cudaGetDeviceCount(&count));
  KILN_CHECK(device >= 0 && device < count, "no CUDA device cuda:", device, " (", count,
             " devices visible)");
  auto* raw = new CudaDeviceMemory(device);
  auto* allocator = new CachingAllocator(*raw, "cuda:" + std::to_string(device));
  allocators->emplace(device, allocator);
  return *allocator;
}

void cuda_empty_cache(int device) { cuda_caching_allocator(device).empty_cache(); }

AllocatorStats cuda_memory_stats(int device) { return cuda_caching_allocator(device).stats(); }

}  // namespace kiln
