#include "nn/init.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln::nn::init {

int64_t fan_in(const Tensor& weight) {
  KILN_CHECK(weight.dim() >= 2, "fan_in needs a weight with at least 2 dims, got ", weight.meta_str());
  return weight.numel() / weight.size(0);
}

void uniform_(Tensor& t, double low, double high, Generator* gen) {
  NoGradGuard no_grad;
  kiln::uniform_(t, low, high, gen);
}

void normal_(Tensor& t, double mean, double std, Generator* gen) {
  NoGradGuard no_grad;
  kiln::normal_(t, mean, std, gen);
}

void kaiming_uniform_default_(Tensor& weight, Generator* gen) {
  // gain = sqrt(2 / (1 + a^2)) with a = sqrt(5); bound = gain * sqrt(3 / fan_in) = 1/sqrt(fan_in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in(weight)));
  init::uniform_(weight, -bound, bound, gen);
}

void bias_default_(Tensor& bias, int64_t fan_in, Generator* gen) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  init::uniform_(bias, -bound, bound, gen);
}

}  // namespace kiln::nn::init
