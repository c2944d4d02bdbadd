#include "core/build_info.h"

#include <sstream>

#include "core/device.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>
#endif
#ifdef KILN_WITH_CUDNN
#include <cudnn.h>
#endif
#ifdef KILN_WITH_NCCL
#include <nccl.h>
#endif

namespace kiln {

namespace {
std::string dotted(int major, int minor, int patch = -1) {
  std::string s = std::to_string(major) + "." + std::to_string(minor);
  return patch >= 0 ? s + "." + std::to_string(patch) : s;
}
}  // namespace

BuildInfo build_info() {
  BuildInfo info;
  info.version = KILN_VERSION;
  info.build_type = KILN_BUILD_TYPE;
#ifdef KILN_WITH_CUDA
  info.cuda = dotted(CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
  info.gpu_count = cuda_device_count();
  if (info.gpu_count > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) info.gpu_name = prop.name;
    int driver = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess) info.driver = dotted(driver / 1000, driver % 1000 / 10);
  }
#endif
#ifdef KILN_WITH_CUDNN
  info.cudnn = dotted(CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
#endif
#ifdef KILN_WITH_NCCL
  info.nccl = dotted(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
#endif
  return info;
}

std::string version_report() {
  const BuildInfo b = build_info();
  auto or_none = [](const std::string& s) { return s.empty() ? std::string("not built in") : s; };
  std::ostringstream os;
  os << "kiln " << b.version << " (" << b.build_type << ")\n"
     << "CUDA: " << or_none(b.cuda) << "\n"
     << "cuDNN: " << or_none(b.cudnn) << "\n"
     << "NCCL: " << or_none(b.nccl) << "\n";
  if (b.gpu_count > 0)
    os << "GPU: " << b.gpu_count << " visible, cuda:0 = " << b.gpu_name << " (driver " << b.driver << ")\n";
  else
    os << "GPU: none visible\n";
  return os.str();
}

}  // namespace kiln
