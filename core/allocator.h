// Raw memory for tensor storage. The CPU allocator returns 64-byte aligned blocks (good for
// AVX-512 loads and OpenBLAS); CUDA memory comes from the caching allocator.
#pragma once

#include <cstddef>

#include "core/device.h"

namespace kiln {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void deallocate(void* ptr) = 0;
};

Allocator* cpu_allocator();
// CPU allocator for cpu, the caching allocator of the device for cuda:N.
Allocator* allocator_for(Device device);

}  // namespace kiln
