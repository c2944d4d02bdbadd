// What the CPU and CUDA indexing kernels (kernels/cpu/index.cpp, kernels/cuda/index.cu)
// share: the [outer, size, inner] view of a tensor around a dim, the dtypes the accumulating
// ops (index_add, scatter_add) take, and the error a bad index gives on either device.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/error.h"
#include "core/half.h"
#include "core/shape.h"

namespace kiln {

// A contiguous tensor seen as [outer, size, inner] around `dim`.
struct DimSplit {
  int64_t outer = 1, size = 1, inner = 1;
};

inline DimSplit split_at(const Shape& shape, int64_t dim) {
  DimSplit s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d < dim)
      s.outer *= shape[d];
    else if (d > dim)
      s.inner *= shape[d];
  }
  s.size = shape[dim];
  return s;
}

// Runs f(T{}) with the element type of an accumulating op (floating, i32, i64).
template <class F>
void dispatch_addable(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f64:
      return f(double{});
    case DType::f16:
      return f(Half{});
    case DType::bf16:
      return f(BFloat16{});
    case DType::i32:
      return f(int32_t{});
    case DType::i64:
      return f(int64_t{});
    default:
      KILN_FAIL(op, ": unsupported dtype ", t);
  }
}

[[noreturn]] inline void fail_index_out_of_range(const char* op, int64_t index, int64_t dim, int64_t size) {
  KILN_FAIL(op, ": index ", index, " is out of range for dim ", dim, " with size ", size);
}

}  // namespace kiln
