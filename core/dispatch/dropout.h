// The dropout kernel: out[i] = in[i] * (dropped(i) ? 0 : scale), where element i is dropped
// when uniform_float(seed, offset, i) < p, the very number rand() draws for element i at
// (seed, offset). So a CPU and a CUDA dropout with one seed drop the same elements, and the
// backward pass regenerates the mask from (seed, offset) instead of storing it: the gradient
// is this same kernel applied to the output gradient.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// uniform_float is (word >> 8) * 2^-24 (core/philox.h), and for an integer k, k * 2^-24 < p
// exactly when k < ceil(p * 2^24) (scaling by 2^24 is exact). The kernels compare integers,
// so no rounding can make the devices disagree. p in [0, 1] gives a threshold in [0, 2^24].
inline uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(std::ceil(p * 0x1p24)); }

// Contiguous `in` and `out` of one shape and dtype; element i is dropped when
// (philox_u32(seed, offset, i) >> 8) < threshold.
extern DispatchStub<void(Tensor& out, const Tensor& in, uint64_t seed, uint64_t offset,
                         uint32_t threshold, double scale)>
    dropout_stub;

}  // namespace kiln
