// The fused Adam/AdamW update: every parameter of a list moves one step in one pass over
// its memory (param, grad, exp_avg, exp_avg_sq read once, three of them written once).
// The stub object is defined in optim/fused_step.cpp, which checks the lists first.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

// For every i, elementwise (PyTorch's torch.optim.Adam / AdamW, amsgrad off), with
// bc1 = 1 - beta1^step and bc2 = 1 - beta2^step:
//   decoupled:  p *= 1 - lr*weight_decay                  (AdamW)
//   otherwise:  g += weight_decay * p                      (Adam: L2 added to the gradient)
//   m = beta1*m + (1 - beta1)*g
//   v = beta2*v + (1 - beta2)*g*g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// The lists are equally long; entry i of each has the shape, dtype and device of params[i];
// all are contiguous, on one device, of one floating dtype. `step` is the step being taken
// (1 for the first).
extern DispatchStub<void(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                         std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs,
                         double lr, double beta1, double beta2, double eps, double weight_decay,
                         int64_t step, bool decoupled)>
    adamw_stub;

}  // namespace kiln
