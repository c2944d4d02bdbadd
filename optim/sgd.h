// Stochastic gradient descent with momentum, torch.optim.SGD's update rule exactly:
//   d = g + weight_decay * p
//   buf = d                                  on the first step (a copy)
//   buf = momentum * buf + (1 - dampening) * d   afterwards
//   d = nesterov ? d + momentum * buf : buf  (when momentum != 0)
//   p -= lr * d
#pragma once

#include "optim/optimizer.h"

namespace kiln {

class SGD : public Optimizer {
 public:
  // Reads lr, weight_decay (default 0), momentum, dampening and nesterov.
  SGD(std::vector<ParamGroup> groups, const OptimizerOptions& options = {});
  void step() override;

 private:
  double momentum_, dampening_;
  bool nesterov_;
};

}  // namespace kiln
