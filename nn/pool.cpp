#include "nn/pool.h"

namespace kiln::nn {

namespace {
// PyTorch prints these arguments as the user gave them; kiln has no record of that, so a
// square size prints as one number and any other as a pair.
std::string size_str(Size2 s) {
  if (s.h == s.w) return std::to_string(s.h);
  return "(" + std::to_string(s.h) + ", " + std::to_string(s.w) + ")";
}
}  // namespace

MaxPool2d::MaxPool2d(Size2 kernel_size, Size2 stride, Size2 padding)
    : Module("MaxPool2d"), kernel_(kernel_size), stride_(stride), padding_(padding) {}

Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, kernel_, stride_, padding_); }

std::string MaxPool2d::extra_repr() const {
  return "kernel_size=" + size_str(kernel_) + ", stride=" + size_str(stride_) +
         ", padding=" + size_str(padding_) + ", dilation=1, ceil_mode=false";
}

AvgPool2d::AvgPool2d(Size2 kernel_size, Size2 stride, Size2 padding, bool count_include_pad)
    : Module("AvgPool2d"),
      kernel_(kernel_size),
      stride_(stride),
      padding_(padding),
      count_include_pad_(count_include_pad) {}

Tensor AvgPool2d::forward(const Tensor& x) {
  return avg_pool2d(x, kernel_, stride_, padding_, count_include_pad_);
}

std::string AvgPool2d::extra_repr() const {
  std::string s = "kernel_size=" + size_str(kernel_) + ", stride=" + size_str(stride_) +
                  ", padding=" + size_str(padding_);
  if (!count_include_pad_) s += ", count_include_pad=false";
  return s;
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(Size2 output_size)
    : Module("AdaptiveAvgPool2d"), output_size_(output_size) {}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) { return adaptive_avg_pool2d(x, output_size_); }

std::string AdaptiveAvgPool2d::extra_repr() const { return "output_size=" + size_str(output_size_); }

}  // namespace kiln::nn
