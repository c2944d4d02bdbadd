#include "nn/linear.h"

#include "nn/init.h"

namespace kiln::nn {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator* gen)
    : Module("Linear"), in_(in_features), out_(out_features) {
  weight = register_parameter("weight", empty({out_features, in_features}));
  init::kaiming_uniform_default_(weight, gen);
  if (bias) {
    this->bias = register_parameter("bias", empty({out_features}));
    init::bias_default_(this->bias, in_features, gen);
  }
}

Tensor Linear::forward(const Tensor& x) {
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == in_, "Linear(", in_, " -> ", out_, "): input ",
             x.meta_str(), " does not end in ", in_, " features");
  return linear(x, weight, bias);
}

std::string Linear::extra_repr() const {
  return "in_features=" + std::to_string(in_) + ", out_features=" + std::to_string(out_) +
         ", bias=" + (bias.defined() ? "true" : "false");
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& layer : layers_) h = layer->forward(h);
  return h;
}

}  // namespace kiln::nn
