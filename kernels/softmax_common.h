// What the CPU and CUDA softmax and cross-entropy kernels (kernels/cpu/softmax.cpp,
// kernels/cuda/softmax.cu) share: their argument checks, and the cross-entropy formulas with
// label smoothing, so both devices compute the same loss and gradient from a row's statistics.
#pragma once

#include "core/error.h"
#include "core/host_device.h"
#include "core/tensor.h"

namespace kiln {

inline void check_softmax_args(const Tensor& out, const Tensor& in) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous() && in.dtype() == out.dtype(),
             "softmax kernel: ", in.meta_str(), " -> ", out.meta_str());
}

inline void check_softmax_backward_args(const Tensor& grad_in, const Tensor& grad_out, const Tensor& out) {
  KILN_CHECK(grad_in.is_contiguous() && grad_out.is_contiguous() && out.is_contiguous() &&
                 grad_out.dtype() == out.dtype() && grad_in.dtype() == out.dtype(),
             "softmax backward kernel: ", grad_out.meta_str(), ", ", out.meta_str(), " -> ",
             grad_in.meta_str());
}

// Every target is ignore_index or a class in [0, classes), checked on the CPU where the row can be
// named; `op` and `noun` word the error ("cross_entropy", "classes").
template <class Idx>
void check_class_targets(const Idx* t, int64_t rows, int64_t classes, int64_t ignore_index, const char* op,
                         const char* noun) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t target = static_cast<int64_t>(t[r]);
    KILN_CHECK(target == ignore_index || (target >= 0 && target < classes), op, ": target ", target,
               " at row ", r, " is out of range for ", classes, " ", noun, " (ignore_index ", ignore_index, ")");
  }
}

// `per_row`: the losses (forward) or their gradient (backward).
inline void check_cross_entropy_args(const Tensor& logits, const Tensor& targets, const Tensor& per_row,
                                     const char* what) {
  KILN_CHECK(logits.dim() == 2 && logits.is_contiguous() && targets.dim() == 1 &&
                 targets.is_contiguous() && targets.size(0) == logits.size(0) &&
                 per_row.dim() == 1 && per_row.size(0) == logits.size(0) &&
                 per_row.dtype() == accumulate_dtype(logits.dtype()),
             what, ": logits ", logits.meta_str(), ", targets ", targets.meta_str(), ", per-row ",
             per_row.meta_str());
}

inline void check_cross_entropy_backward_args(const Tensor& dlogits, const Tensor& logits,
                                              const Tensor& targets, const Tensor& grad_losses) {
  check_cross_entropy_args(logits, targets, grad_losses, "cross_entropy backward kernel");
  KILN_CHECK(dlogits.is_contiguous() && dlogits.shape() == logits.shape() &&
                 dlogits.dtype() == logits.dtype(),
             "cross_entropy backward kernel: dlogits ", dlogits.meta_str());
}

// One row's loss from its log-sum-exp `lse`, the target's logit and (with smoothing e > 0
// only) the mean logit: (1-e) * (lse - x[t]) + e * (lse - mean(x)), as the smoothed target
// puts e/C on each class.
template <class A>
KILN_HOST_DEVICE inline A cross_entropy_loss(A lse, A target_logit, A mean_logit, A smoothing) {
  const A nll = lse - target_logit;
  return smoothing > A(0) ? (A(1) - smoothing) * nll + smoothing * (lse - mean_logit) : nll;
}

// d loss / d logit c = g * (softmax(x)[c] - (1-e) * [c == t] - e/C), with `prob` = softmax(x)[c]
// and `off` = e/C.
template <class A>
KILN_HOST_DEVICE inline A cross_entropy_grad(A g, A prob, bool is_target, A smoothing, A off) {
  return g * (prob - (is_target ? A(1) - smoothing : A(0)) - off);
}

}  // namespace kiln
