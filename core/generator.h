// Generator: the (seed, offset) pair that names the next random draw. The numbers themselves
// come from core/philox.h as a pure function of (seed, offset, element index), so a draw is
// reproducible on CPU and GPU alike, and a checkpoint restores the stream by saving
// (seed(), offset()) and calling set_state().
#pragma once

#include <cstdint>
#include <mutex>

namespace kiln {

class Generator {
 public:
  // Seed 0 by default, so a program that never seeds is still deterministic.
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}

  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Restarts the stream: the new seed at offset 0.
  void manual_seed(uint64_t seed);
  uint64_t seed() const;
  uint64_t offset() const;
  void set_state(uint64_t seed, uint64_t offset);

  // Reserves the offset for a draw of `numel` elements and returns it. The offset moves by
  // ceil(numel / 4), the number of Philox blocks the draw uses (at least 1, so every call gets
  // a fresh offset). Any two calls therefore use disjoint counters, even in a kernel that
  // walks the offset lane per block as cuRAND-style code does. Safe to call from many threads.
  uint64_t advance(uint64_t numel);

 private:
  mutable std::mutex mu_;
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// The process-wide generator that random ops use when none is given.
Generator& default_generator();

// Seeds the default generator (torch.manual_seed).
void manual_seed(uint64_t seed);

}  // namespace kiln
