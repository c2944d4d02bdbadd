// LayerNorm, as torch.nn.LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight +
// bias, with the biased variance. weight starts at ones and bias at zeros.
#pragma once

#include <cstdint>
#include <string>

#include "nn/module.h"

namespace kiln::nn {

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;

  int64_t normalized_shape() const { return c_; }
  double eps() const { return eps_; }
  // Handles to the registered tensors [C]; undefined unless elementwise_affine.
  Tensor weight, bias;

 private:
  int64_t c_;
  double eps_;
};

}  // namespace kiln::nn
