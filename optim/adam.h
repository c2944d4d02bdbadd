// Adam and AdamW (torch.optim.Adam / AdamW, amsgrad off), both through the fused update of
// optim/fused_step.h: the parameters of a group that share a device, dtype and step count
// update together (on CUDA, in a few multi-tensor launches).
//   Adam:  weight decay is L2 added to the gradient (g += wd * p), default wd 0
//   AdamW: decoupled decay p *= 1 - lr * wd before the Adam step, default wd 1e-2
// State per parameter: step (i64 CPU scalar), exp_avg and exp_avg_sq (like the parameter).
// Parameters must be f32 or f64.
#pragma once

#include "optim/optimizer.h"

namespace kiln {

class Adam : public Optimizer {
 public:
  // Reads lr, beta1, beta2, eps and weight_decay (default 0).
  Adam(std::vector<ParamGroup> groups, const OptimizerOptions& options = {});
  void step() override;

 protected:
  Adam(const char* name, std::vector<ParamGroup> groups, const OptimizerOptions& options,
       double default_weight_decay, bool decoupled);

 private:
  double beta1_, beta2_, eps_;
  bool decoupled_;
};

class AdamW : public Adam {
 public:
  // Reads lr, beta1, beta2, eps and weight_decay (default 1e-2, as in PyTorch).
  AdamW(std::vector<ParamGroup> groups, const OptimizerOptions& options = {});
};

}  // namespace kiln
