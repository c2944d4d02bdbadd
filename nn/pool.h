// Pooling modules, as torch.nn.MaxPool2d, AvgPool2d and AdaptiveAvgPool2d. They hold no
// parameters; forward calls the op of the same name (core/ops.h).
#pragma once

#include <string>

#include "core/ops.h"
#include "nn/module.h"

namespace kiln::nn {

// Without a stride, stride = kernel_size, as in PyTorch.
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Size2 kernel_size) : MaxPool2d(kernel_size, kernel_size) {}
  MaxPool2d(Size2 kernel_size, Size2 stride, Size2 padding = 0);
  Tensor forward(const Tensor& x) override;
  // "kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=false"
  std::string extra_repr() const override;

 private:
  Size2 kernel_, stride_, padding_;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(Size2 kernel_size) : AvgPool2d(kernel_size, kernel_size) {}
  AvgPool2d(Size2 kernel_size, Size2 stride, Size2 padding = 0, bool count_include_pad = true);
  Tensor forward(const Tensor& x) override;
  // "kernel_size=2, stride=2, padding=0"
  std::string extra_repr() const override;

 private:
  Size2 kernel_, stride_, padding_;
  bool count_include_pad_;
};

class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(Size2 output_size);
  Tensor forward(const Tensor& x) override;
  // "output_size=1" or "output_size=(2, 3)"
  std::string extra_repr() const override;

 private:
  Size2 output_size_;
};

}  // namespace kiln::nn
