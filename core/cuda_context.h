// Per-device CUDA state kiln's kernels share: the stream they launch on and the device's
// properties. Only compiled into CUDA builds; include from .cu files and CUDA-only sources.
#pragma once

#include <cuda_runtime.h>

#include "core/cuda_check.h"

namespace kiln::cuda {

// The stream kiln launches work on for `device` (-1: the current device). A non-blocking
// stream created on first use, so kiln never serialises against the legacy default stream.
cudaStream_t current_stream(int device = -1);
int current_device();
const cudaDeviceProp& device_properties(int device = -1);

// ceil(a / b) for a >= 0, b > 0: blocks needed to cover a elements, b per block.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n elements with `threads` per block: enough blocks
// to fill every SM a few times over, never more than the work needs.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t sms = device_properties().multiProcessorCount;
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = sms * 8;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

// Sets the device for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_;
};

}  // namespace kiln::cuda
