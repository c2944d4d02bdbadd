// Random fills from the Philox stream (core/philox.h): element i of a contiguous `out` gets
// the draw for (seed, offset, i), so CPU and CUDA produce the same numbers.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

enum class RandomDist : uint8_t {
  uniform,  // [a, b)
  normal,   // mean a, std b
  integer,  // [a, b) integers
};

extern DispatchStub<void(Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a,
                         double b)>
    random_stub;

}  // namespace kiln
