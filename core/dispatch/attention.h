// Attention kernels behind scaled_dot_product_attention (core/ops/attention.cpp). Every tensor
// is contiguous; q, out and dq are [BH, Tq, D], k, v, dk and dv are [BH, Tk, D] (batch and
// heads folded into one dim). Scores are scale * q k^T; with `causal` (Tq == Tk) query i sees
// keys 0..i only.
#pragma once

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// Flash attention forward: out = softmax(scores) v, and lse [BH, Tq] (f32, f64 for f64
// inputs) = the log-sum-exp of each row of scores, all that backward needs besides q, k, v and
// out. A row with no keys (Tk == 0) gets out 0 and lse -inf.
extern DispatchStub<void(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                         bool causal, double scale)>
    flash_attention_forward_stub;
// Flash attention backward: recomputes P = exp(scores - lse) tile by tile and writes dq, dk, dv
// (each overwritten, in the inputs' dtype) without atomics.
extern DispatchStub<void(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                         const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                         bool causal, double scale)>
    flash_attention_backward_stub;

// The batched backend's middle step: probs = softmax(scale * scores + causal mask) over the
// last dim of scores [BH, Tq, Tk], fused into one pass (CUDA only: on the CPU the batched
// backend is the naive one).
extern DispatchStub<void(Tensor& probs, const Tensor& scores, bool causal, double scale)>
    attention_softmax_stub;
// grad_scores = scale * probs * (grad_probs - rowsum(grad_probs * probs)).
extern DispatchStub<void(Tensor& grad_scores, const Tensor& grad_probs, const Tensor& probs,
                         double scale)>
    attention_softmax_backward_stub;

}  // namespace kiln
