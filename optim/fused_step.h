// The checked entry point to the fused Adam/AdamW kernels (core/dispatch/optim.h): validates
// the four lists, runs the device's kernel, and bumps the version of everything it wrote.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace kiln {

struct AdamHyperParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = true;  // AdamW's decay (p *= 1 - lr*wd); false: Adam's L2 on the gradient
};

// One Adam/AdamW step (number `step`, 1 for the first) for every params[i] with gradient
// grads[i] and moments exp_avgs[i], exp_avg_sqs[i], all updated in place. All tensors share
// one device and one dtype (f32 or f64); entry i of each list has params[i]'s shape.
// Gradients may be non-contiguous; parameters too (they update through a contiguous copy).
void fused_adam_update(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs,
                       const AdamHyperParams& h, int64_t step);

}  // namespace kiln
