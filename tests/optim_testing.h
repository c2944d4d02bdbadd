// What the optimizer tests share: f64 (or `dtype`) tensors from values, as parameters.
#pragma once

#include <vector>

#include "core/ops.h"
#include "core/tensor.h"

namespace kiln::testing {

inline Tensor values_tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  return from_vector(v, shape, {.dtype = dtype});
}

inline Tensor param_of(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  Tensor p = values_tensor(v, shape, dtype);
  p.requires_grad_();
  return p;
}

}  // namespace kiln::testing
