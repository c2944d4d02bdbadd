// Batched matrix multiply: out[b] = a[b] @ b[b] for 3-D a [B, M, K], b [B, K, N] and a
// contiguous out [B, M, N]. a and b may be row- or column-major in their last two dims
// (transposed views cost nothing: they become BLAS transpose flags).
#pragma once

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

extern DispatchStub<void(Tensor& out, const Tensor& a, const Tensor& b)> bmm_stub;

}  // namespace kiln
