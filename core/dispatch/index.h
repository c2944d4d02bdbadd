// Indexing kernels. `in`, `src` and `out` are contiguous; indices are i32 or i64 and are
// bounds-checked (an out-of-range index is an error naming the index and the size).
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// out = in.index_select(dim, index): out.shape[dim] = index.numel().
extern DispatchStub<void(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index)>
    index_select_stub;
// self.index_add_(dim, index, src): self.select(dim, index[i]) += src.select(dim, i).
extern DispatchStub<void(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src)>
    index_add_stub;
// out[..i..] = in[..index[..i..]..] along dim; out has index's shape.
extern DispatchStub<void(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index)>
    gather_stub;
// self[..index[..i..]..] += src[..i..] along dim.
extern DispatchStub<void(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src)>
    scatter_add_stub;

}  // namespace kiln
