// What the CPU and CUDA batch-norm kernels (kernels/cpu/norm.cpp, kernels/cuda/norm.cu)
// share: the checks of the input and of the per-channel tensors, and how an optional
// per-channel tensor reaches a kernel (a null pointer when undefined).
#pragma once

#include <initializer_list>

#include "core/dispatch/norm.h"
#include "core/error.h"
#include "core/tensor.h"

namespace kiln {

// The data of an optional per-channel tensor, or null when it is undefined.
template <class A>
const A* data_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const A*>(t.data_ptr()) : nullptr;
}

inline void check_norm_input(const Tensor& x, NormGeometry g, const char* what) {
  KILN_CHECK(x.is_contiguous() && x.numel() == g.n * g.channels * g.inner, what, ": input ",
             x.meta_str(), " is not a contiguous [", g.n, ", ", g.channels, ", ", g.inner, "]");
}

// Each of `ts` is undefined or a contiguous [channels] tensor of the accumulation dtype on x's device.
inline void check_per_channel(std::initializer_list<const Tensor*> ts, const Tensor& x, NormGeometry g,
                              const char* what) {
  for (const Tensor* t : ts) {
    KILN_CHECK(!t->defined() || (t->is_contiguous() && t->dtype() == accumulate_dtype(x.dtype()) &&
                                 t->numel() == g.channels && t->device() == x.device()),
               what, ": per-channel tensor ", t->meta_str(), " (expected contiguous ",
               accumulate_dtype(x.dtype()), "[", g.channels, "] on ", x.device(), ")");
  }
}

}  // namespace kiln
