#include "core/cuda_context.h"

#include <mutex>

namespace kiln::cuda {

namespace {
constexpr int kMaxDevices = 64;
}

int current_device() {
  int d = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

cudaStream_t current_stream(int device) {
  if (device < 0) device = current_device();
  KILN_CHECK(device < kMaxDevices, "CUDA device index ", device, " too large");
  static cudaStream_t streams[kMaxDevices] = {};
  static std::once_flag once[kMaxDevices];
  std::call_once(once[device], [device] {
    DeviceGuard guard(device);
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  });
  return streams[device];
}

const cudaDeviceProp& device_properties(int device) {
  if (device < 0) device = current_device();
  KILN_CHECK(device < kMaxDevices, "CUDA device index ", device, " too large");
  static cudaDeviceProp props[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  std::call_once(once[device], [device] {
    KILN_CUDA_CHECK(cudaGetDeviceProperties(&props[device], device));
  });
  return props[device];
}

DeviceGuard::DeviceGuard(int device) : prev_(current_device()) {
  if (device != prev_) KILN_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = 0;
  if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
}

}  // namespace kiln::cuda
