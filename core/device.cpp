#include "core/device.h"

#include <charconv>
#include <ostream>

#include "core/error.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kiln {

Device Device::parse(std::string_view spec) {
  if (spec == "cpu") return kCPU;
  if (spec == "cuda") return Device(DeviceType::CUDA, 0);
  if (spec.substr(0, 5) == "cuda:") {
    int index = -1;
    std::string_view num = spec.substr(5);
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), index);
    if (ec == std::errc() && end == num.data() + num.size() && index >= 0)
      return Device(DeviceType::CUDA, index);
  }
  KILN_FAIL("bad device '", spec, "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  return is_cpu() ? "cpu" : "cuda:" + std::to_string(index);
}

std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

int cuda_device_count() {
#ifdef KILN_WITH_CUDA
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: not an error for a CPU run
      return 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

}  // namespace kiln
