// Softmax, log-softmax and cross-entropy kernels. Inputs contiguous, viewed as
// [outer, classes, inner] with softmax over the middle dim.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

extern DispatchStub<void(Tensor& out, const Tensor& in, int64_t outer, int64_t classes,
                         int64_t inner, bool log)>
    softmax_stub;
// grad_in = softmax'(out) applied to grad_out; `out` is the forward result.
extern DispatchStub<void(Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                         int64_t outer, int64_t classes, int64_t inner, bool log)>
    softmax_backward_stub;

// Per-row losses [N] (f32, or f64 for f64 logits) of logits [N, C] against integer targets
// [N]; rows whose target is ignore_index get loss 0. With label smoothing e the target
// distribution is (1-e)*onehot + e/C.
extern DispatchStub<void(Tensor& losses, const Tensor& logits, const Tensor& targets,
                         int64_t ignore_index, double label_smoothing)>
    cross_entropy_stub;
// dlogits[n] = grad_losses[n] * (softmax(logits[n]) - target distribution); 0 for ignored rows.
extern DispatchStub<void(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                         const Tensor& grad_losses, int64_t ignore_index, double label_smoothing)>
    cross_entropy_backward_stub;

}  // namespace kiln
