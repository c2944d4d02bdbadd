// linear: y = act(x @ w^T + b) as one GEMM with its epilogue, and the weight gradient with the
// bias gradient folded in. The op (core/ops/linear.cpp) hands the kernels 2-D operands: x
// [N, in] and dz [N, out] with unit-stride rows, w [out, in] row-major, outputs contiguous.
// A kernel returns false, having written nothing, when it cannot fuse a case (a dtype its
// library has no epilogue for, an unaligned buffer); the op then composes the same result
// from matmul, add, gelu and sum.
#pragma once

#include "core/dispatch.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace kiln {

// out [N, out] = act(x @ w^T + b); b [out] may be undefined. With Activation::gelu, `pre`
// [N, out] receives x @ w^T + b, the GELU's input, which backward needs.
extern DispatchStub<bool(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b,
                         Activation act)>
    linear_stub;

// grad_w [out, in] = dz^T @ x, written in w's own layout; grad_b [out] (skipped when undefined)
// = the sum of dz's rows.
extern DispatchStub<bool(Tensor& grad_w, Tensor& grad_b, const Tensor& dz, const Tensor& x)>
    linear_weight_grad_stub;

}  // namespace kiln
