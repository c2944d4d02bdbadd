// The dispatch table: one row per kernel family (a DispatchStub), one column per device type.
// core declares the stub and calls it; kernels/cpu and kernels/cuda fill in their column with
// KILN_REGISTER_KERNEL at load time. Dtype dispatch happens inside each kernel.
//
// Adding an op family: declare its stub in core/dispatch/<family>.h, define it in
// core/ops/<family>.cpp, register kernels in kernels/{cpu,cuda}/<family>.{cpp,cu}.
#pragma once

#include <utility>

#include "core/device.h"
#include "core/error.h"

namespace kiln {

template <class Fn>
struct DispatchStub;

template <class R, class... Args>
struct DispatchStub<R(Args...)> {
  using Fn = R (*)(Args...);
  const char* name;
  Fn table[kNumDeviceTypes] = {};

  // Constant-initialised, so kernels may register from any static initialiser.
  constexpr explicit DispatchStub(const char* n) : name(n) {}

  template <class... A>
  R operator()(Device device, A&&... args) const {
    Fn fn = table[static_cast<int>(device.type)];
    KILN_CHECK(fn, "no ", name, " kernel for ", device,
               device.is_cuda() ? " (kiln was built without CUDA)" : "");
    return fn(std::forward<A>(args)...);
  }
};

namespace detail {
template <class Stub, class Fn>
bool register_kernel(Stub& stub, DeviceType type, Fn fn) {
  stub.table[static_cast<int>(type)] = fn;
  return true;
}
}  // namespace detail

}  // namespace kiln

#define KILN_CONCAT_INNER(a, b) a##b
#define KILN_CONCAT(a, b) KILN_CONCAT_INNER(a, b)
// KILN_REGISTER_KERNEL(add_stub, CPU, &add_kernel) at namespace scope in a kernel file.
#define KILN_REGISTER_KERNEL(stub, device_type, fn)                          \
  [[maybe_unused]] static const bool KILN_CONCAT(kiln_registered_, __LINE__) = \
      ::kiln::detail::register_kernel(stub, ::kiln::DeviceType::device_type, fn)
