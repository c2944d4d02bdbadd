// nn::Conv2d, as torch.nn.Conv2d (zero padding).
#pragma once

#include <string>

#include "core/ops.h"
#include "nn/module.h"

namespace kiln {
class Generator;
}

namespace kiln::nn {

// y = conv2d(x, weight, bias) with weight [out, in/groups, kH, kW] and bias [out]. Both start
// as PyTorch's defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in/groups * kH * kW.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size, Size2 stride = 1,
         Size2 padding = 0, Size2 dilation = 1, int64_t groups = 1, bool bias = true,
         Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  // "1, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)", as PyTorch prints it.
  std::string extra_repr() const override;

  // Handles to the registered tensors; they follow Module::to().
  Tensor weight;
  Tensor bias;  // undefined when bias=false

 private:
  int64_t in_, out_;
  Size2 kernel_, stride_, padding_, dilation_;
  int64_t groups_;
};

}  // namespace kiln::nn
