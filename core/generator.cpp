#include "core/generator.h"

namespace kiln {

void Generator::manual_seed(uint64_t seed) { set_state(seed, 0); }

uint64_t Generator::seed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seed_;
}

uint64_t Generator::offset() const {
  std::lock_guard<std::mutex> lock(mu_);
  return offset_;
}

void Generator::set_state(uint64_t seed, uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  seed_ = seed;
  offset_ = offset;
}

uint64_t Generator::advance(uint64_t numel) {
  // numel / 4 + (numel % 4 != 0) rounds up without overflowing for numel near 2^64.
  uint64_t blocks = numel / 4 + (numel % 4 != 0);
  if (blocks == 0) blocks = 1;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t start = offset_;
  offset_ += blocks;
  return start;
}

Generator& default_generator() {
  static Generator generator;  // constructed on first use, thread-safe since C++11
  return generator;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace kiln
