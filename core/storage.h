// The memory behind one or more tensors. Views share a Storage, and with it the version
// counter that autograd uses to detect in-place changes to saved tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/allocator.h"
#include "core/device.h"

namespace kiln {

class Storage {
 public:
  Storage(std::size_t nbytes, Device device, Allocator* allocator);
  // Wraps memory someone else owns (no free at the end).
  Storage(void* data, std::size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  uint32_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;  // null: not owned
  uint32_t version_ = 0;
};

}  // namespace kiln
