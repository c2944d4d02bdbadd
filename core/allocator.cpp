#include "core/allocator.h"

#include <malloc.h>

#include <cstdlib>
#include <mutex>
#include <new>

#include "core/error.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "core/caching_allocator.h"
#include "core/cuda_allocator.h"
#include "core/cuda_context.h"
#endif

namespace kiln {

namespace {

class CpuAllocator final : public Allocator {
 public:
  CpuAllocator() {
    // Training frees and reallocates the same activation sizes every step. glibc would hand
    // blocks of 128 KiB+ back to the kernel and fault every page in again next step (~10% of
    // an MLP step); keeping them in the heap makes the next step reuse them.
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
  }
  void* allocate(std::size_t bytes) override {
    constexpr std::size_t kAlign = 64;
    void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    KILN_CHECK(p, "out of host memory: could not allocate ", bytes, " bytes");
    return p;
  }
  void deallocate(void* ptr) override { std::free(ptr); }
};

#ifdef KILN_WITH_CUDA
// Tensors on cuda:N draw from that device's caching allocator, on kiln's stream.
class CudaTensorAllocator final : public Allocator {
 public:
  explicit CudaTensorAllocator(int device) : device_(device) {}
  void* allocate(std::size_t bytes) override {
    auto stream = reinterpret_cast<StreamId>(cuda::current_stream(device_));
    return cuda_caching_allocator(device_).allocate(bytes, stream);
  }
  void deallocate(void* ptr) override { cuda_caching_allocator(device_).free(ptr); }

 private:
  int device_;
};
#endif

}  // namespace

Allocator* cpu_allocator() {
  static CpuAllocator instance;
  return &instance;
}

Allocator* allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator();
#ifdef KILN_WITH_CUDA
  KILN_CHECK(device.index < cuda_device_count(), "device ", device, " is not available (",
             cuda_device_count(), " CUDA devices visible)");
  static CudaTensorAllocator* per_device[64] = {};
  static std::once_flag once[64];
  std::call_once(once[device.index], [&] { per_device[device.index] = new CudaTensorAllocator(device.index); });
  return per_device[device.index];
#else
  KILN_FAIL("cannot allocate on ", device, ": kiln was built without CUDA");
#endif
}

}  // namespace kiln
