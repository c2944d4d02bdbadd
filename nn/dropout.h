// Dropout, as torch.nn.Dropout: inverted dropout in training (kept elements scaled by
// 1 / (1 - p)), the identity in eval. Draws from the default generator, so kiln::manual_seed
// makes a run's masks reproducible.
#pragma once

#include <string>

#include "nn/module.h"

namespace kiln::nn {

class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  double p() const { return p_; }

 private:
  double p_;
};

}  // namespace kiln::nn
