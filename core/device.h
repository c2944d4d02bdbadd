// Where a tensor lives: "cpu" or "cuda:N".
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

namespace kiln {

enum class DeviceType : uint8_t { CPU = 0, CUDA = 1 };
inline constexpr int kNumDeviceTypes = 2;

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  constexpr Device() = default;
  constexpr Device(DeviceType t, int i = 0) : type(t), index(i) {}  // NOLINT
  Device(const char* spec) : Device(parse(spec)) {}                 // NOLINT: "cpu", "cuda:1"
  Device(const std::string& spec) : Device(parse(spec)) {}          // NOLINT

  static Device parse(std::string_view spec);
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  std::string str() const;
  friend bool operator==(const Device&, const Device&) = default;
};

inline constexpr Device kCPU{DeviceType::CPU, 0};

std::ostream& operator<<(std::ostream& os, const Device& d);

// Number of visible CUDA devices; 0 on CPU-only builds or machines.
int cuda_device_count();
inline bool cuda_is_available() { return cuda_device_count() > 0; }

}  // namespace kiln
