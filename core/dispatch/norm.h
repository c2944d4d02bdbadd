// Batch-norm kernels, split the way the math splits (as ATen's CUDA batch norm is): per-channel
// reductions, then elementwise passes that read the per-channel results. core/ops/norm.cpp
// does the [C]-sized arithmetic in between (invstd, running-stat updates, weight gradients)
// with ordinary ops.
//
// Every kernel sees a contiguous input viewed as [N, C, inner] (inner = product of the
// spatial dims, 1 for [N, C]) and per-channel tensors [C] in the accumulation dtype
// (f32, or f64 for f64 inputs). An undefined weight means 1, an undefined bias 0.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// The geometry every batch-norm kernel receives: x viewed as [n, channels, inner].
struct NormGeometry {
  int64_t n = 1, channels = 1, inner = 1;
  // The M that statistics divide by. constexpr, so CUDA kernels may call it too.
  constexpr int64_t per_channel() const { return n * inner; }
};

// mean[c] and the biased variance var[c] = mean((x - mean)^2) over the n * inner values of
// channel c. Two passes, so a large mean does not cancel the variance away.
extern DispatchStub<void(Tensor& mean, Tensor& var, const Tensor& x, NormGeometry g)>
    batch_norm_stats_stub;

// y = (x - mean[c]) * invstd[c] * weight[c] + bias[c].
extern DispatchStub<void(Tensor& y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                         const Tensor& weight, const Tensor& bias, NormGeometry g)>
    batch_norm_apply_stub;

// sum_dy[c] = sum(dy), sum_dy_xmu[c] = sum(dy * (x - mean[c])) over channel c: what the input
// gradient (training mode) and the weight and bias gradients need.
extern DispatchStub<void(Tensor& sum_dy, Tensor& sum_dy_xmu, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, NormGeometry g)>
    batch_norm_backward_reduce_stub;

// Training mode (sums defined), with M = g.per_channel():
//   dx = weight * invstd * (dy - sum_dy / M - (x - mean) * invstd^2 * sum_dy_xmu / M),
// which is weight * invstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat)).
// Eval mode (sums undefined; mean and invstd come from the running statistics, constants):
//   dx = weight * invstd * dy.
extern DispatchStub<void(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& mean,
                         const Tensor& invstd, const Tensor& weight, const Tensor& sum_dy,
                         const Tensor& sum_dy_xmu, NormGeometry g)>
    batch_norm_backward_input_stub;

}  // namespace kiln
