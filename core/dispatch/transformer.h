// Kernels of the transformer ops (core/ops/transformer.cpp): embedding, layer norm (plain and
// fused with the residual add) and the fused classifier (cross-entropy with its gradient).
//
// Every tensor a kernel receives is contiguous and on one device; the op file reshapes:
//   embedding      weight [V, C], indices [N] (i32 or i64), out / grad_out [N, C]
//   layer norm     x, y, sum, dy, dx [rows, C]; mean, rstd [rows]; weight, bias, dweight,
//                  dbias [C] (undefined weight means 1, undefined bias 0)
//   classifier     logits, dlogits [N, V], targets [N], losses [N]
// Per-row statistics, per-channel parameters and losses are in the accumulation dtype (f32,
// or f64 for f64 inputs); activations keep their own dtype (16-bit floats computed in f32).
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// out[n] = weight[indices[n]]. A bad index is an error on the CPU; on CUDA (which cannot throw
// without waiting for the kernel) its output row is NaN.
extern DispatchStub<void(Tensor& out, const Tensor& weight, const Tensor& indices)> embedding_stub;
// grad_weight[v] = sum of grad_out[n] over the n with indices[n] == v, added in increasing n
// (zero for unused rows): the same bits on every run, no atomics. grad_weight is overwritten.
extern DispatchStub<void(Tensor& grad_weight, const Tensor& grad_out, const Tensor& indices)>
    embedding_backward_stub;

// Per row r of x (of x + residual when residual is defined, which is then written to `sum`):
//   mean[r], rstd[r] = 1 / sqrt(biased variance + eps), y = (x - mean) * rstd * weight + bias.
extern DispatchStub<void(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                         const Tensor& residual, const Tensor& weight, const Tensor& bias,
                         double eps)>
    layer_norm_stub;
// With xhat = (x - mean) * rstd and wdy = weight * dy:
//   dx = rstd * (wdy - mean(wdy) - xhat * mean(wdy * xhat))      (row means over C)
//   dweight = sum over rows of dy * xhat, dbias = sum over rows of dy
// Each of dx, dweight, dbias may be undefined (not wanted). Column sums run in a fixed order.
extern DispatchStub<void(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy,
                         const Tensor& x, const Tensor& mean, const Tensor& rstd,
                         const Tensor& weight)>
    layer_norm_backward_stub;

// The fused classifier (llm.c's fused_classifier). For each row n over the first
// `valid_classes` columns: losses[n] = logsumexp(x) - x[t], and
//   dlogits[n, c] = (softmax(x)[c] - [c == t]) * grad_scale[0]   for c < valid_classes,
// zero for the padded columns and for rows whose target is ignore_index (loss 0 there).
// An undefined dlogits (no gradient wanted: evaluation) skips the gradient pass.
// grad_scale is a one-element tensor of the accumulation dtype on the logits' device (1 / the
// number of counted rows, computed there: no host round trip). A target outside
// [0, valid_classes) is an error on the CPU and gives a NaN loss and gradient row on CUDA.
extern DispatchStub<void(Tensor& losses, Tensor& dlogits, const Tensor& logits,
                         const Tensor& targets, const Tensor& grad_scale, int64_t valid_classes,
                         int64_t ignore_index)>
    fused_cross_entropy_stub;

}  // namespace kiln
