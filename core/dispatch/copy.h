// Kernels behind contiguous(), to(dtype), copy_() and fill_() on one device.
#pragma once

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// dst[i] = convert(src[i]); same shape (src already broadcast), same device, any dtypes.
extern DispatchStub<void(Tensor& dst, const Tensor& src)> copy_stub;
// Every element of dst (any strides) = value converted to dst's dtype.
extern DispatchStub<void(Tensor& dst, double value)> fill_stub;

}  // namespace kiln
