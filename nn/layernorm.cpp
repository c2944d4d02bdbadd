#include "nn/layernorm.h"

#include <sstream>

#include "core/ops.h"

namespace kiln::nn {

LayerNorm::LayerNorm(int64_t normalized_shape, double eps, bool elementwise_affine)
    : Module("LayerNorm"), c_(normalized_shape), eps_(eps) {
  KILN_CHECK(normalized_shape > 0, "LayerNorm: normalized_shape must be positive, got ", normalized_shape);
  if (elementwise_affine) {
    weight = register_parameter("weight", ones({normalized_shape}));
    bias = register_parameter("bias", zeros({normalized_shape}));
  }
}

Tensor LayerNorm::forward(const Tensor& x) {
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == c_, "LayerNorm(", c_, "): input ", x.meta_str(),
             " does not end in ", c_, " features");
  return layer_norm(x, weight, bias, eps_);
}

std::string LayerNorm::extra_repr() const {
  std::ostringstream os;
  os << "(" << c_ << ",), eps=" << eps_ << ", elementwise_affine=" << (weight.defined() ? "true" : "false");
  return os.str();
}

}  // namespace kiln::nn
