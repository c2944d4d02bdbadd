// How elementwise kernels walk their operands: the output shape, collapsed to as few dims
// as possible, and each operand's strides (in elements) over it. Operands are already
// broadcast to the output shape (stride 0 along broadcast dims), so one layout serves
// contiguous, strided and broadcast cases alike. Trivially copyable: passed to CUDA kernels
// by value.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/host_device.h"
#include "core/tensor.h"

namespace kiln {

inline constexpr int kMaxDims = 12;

template <int N>  // N operands; operand 0 is the output
struct ElementwiseLayout {
  int ndim = 0;  // dim 0 is the innermost (fastest varying)
  int64_t numel = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  bool contiguous = false;  // every operand dense and in the same order: offset == linear index

  // Element offset of operand k for linear index i (row-major over the output shape).
  KILN_HOST_DEVICE int64_t offset(int k, int64_t i) const {
    if (contiguous) return i;
    int64_t off = 0;
    for (int d = 0; d < ndim; ++d) {
      int64_t idx = i % sizes[d];
      i /= sizes[d];
      off += idx * strides[k][d];
    }
    return off;
  }
};

// Builds the layout of `operands` (all of one shape; operand 0 the output). Adjacent dims
// that are contiguous for every operand are merged.
template <int N>
ElementwiseLayout<N> make_elementwise_layout(std::initializer_list<const Tensor*> operands) {
  ElementwiseLayout<N> L;
  KILN_CHECK(operands.size() == N, "elementwise layout: expected ", N, " operands, got ",
             operands.size());
  const Tensor* ops[N] = {};
  int k = 0;
  for (const Tensor* t : operands) ops[k++] = t;
  const Shape& shape = ops[0]->shape();
  const int nd = static_cast<int>(shape.size());
  KILN_CHECK(nd <= kMaxDims, "tensors with more than ", kMaxDims, " dims are not supported");
  L.numel = shape_numel(shape);
  bool all_contiguous = true;
  for (int j = 0; j < N; ++j) {
    KILN_CHECK(ops[j]->shape() == shape, "elementwise operands differ in shape: ",
               ops[j]->meta_str(), " vs ", ops[0]->meta_str());
    all_contiguous = all_contiguous && ops[j]->is_contiguous();
  }
  L.contiguous = all_contiguous;
  // Reverse into innermost-first order, dropping size-1 dims, merging where possible.
  for (int d = nd - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    bool merge = L.ndim > 0;
    for (int j = 0; j < N && merge; ++j)
      merge = ops[j]->strides()[d] == L.strides[j][L.ndim - 1] * L.sizes[L.ndim - 1];
    if (merge) {
      L.sizes[L.ndim - 1] *= shape[d];
      continue;
    }
    L.sizes[L.ndim] = shape[d];
    for (int j = 0; j < N; ++j) L.strides[j][L.ndim] = ops[j]->strides()[d];
    ++L.ndim;
  }
  return L;
}

}  // namespace kiln
