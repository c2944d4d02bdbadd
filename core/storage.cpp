#include "core/storage.h"

namespace kiln {

Storage::Storage(std::size_t nbytes, Device device, Allocator* allocator)
    : nbytes_(nbytes), device_(device), allocator_(allocator) {
  data_ = nbytes ? allocator_->allocate(nbytes) : nullptr;
}

Storage::Storage(void* data, std::size_t nbytes, Device device)
    : data_(data), nbytes_(nbytes), device_(device) {}

Storage::~Storage() {
  if (allocator_ && data_) allocator_->deallocate(data_);
}

}  // namespace kiln
