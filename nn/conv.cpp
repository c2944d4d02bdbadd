#include "nn/conv.h"

#include "nn/init.h"

namespace kiln::nn {

namespace {
std::string pair_str(Size2 s) { return "(" + std::to_string(s.h) + ", " + std::to_string(s.w) + ")"; }
}  // namespace

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size, Size2 stride,
               Size2 padding, Size2 dilation, int64_t groups, bool bias, Generator* gen)
    : Module("Conv2d"),
      in_(in_channels),
      out_(out_channels),
      kernel_(kernel_size),
      stride_(stride),
      padding_(padding),
      dilation_(dilation),
      groups_(groups) {
  KILN_CHECK(in_channels > 0 && out_channels > 0, "Conv2d: in_channels (", in_channels,
             ") and out_channels (", out_channels, ") must be positive");
  KILN_CHECK(groups > 0 && in_channels % groups == 0 && out_channels % groups == 0,
             "Conv2d: groups=", groups, " must divide in_channels (", in_channels,
             ") and out_channels (", out_channels, ")");
  KILN_CHECK(kernel_size.h > 0 && kernel_size.w > 0, "Conv2d: kernel_size ", pair_str(kernel_size),
             " must be positive");
  weight = register_parameter("weight",
                              empty({out_channels, in_channels / groups, kernel_size.h, kernel_size.w}));
  init::kaiming_uniform_default_(weight, gen);
  if (bias) {
    this->bias = register_parameter("bias", empty({out_channels}));
    init::bias_default_(this->bias, init::fan_in(weight), gen);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  KILN_CHECK(x.dim() >= 3 && x.size(-3) == in_, "Conv2d(", in_, " -> ", out_, "): input ",
             x.meta_str(), " does not have ", in_, " channels (expected [N, ", in_, ", H, W])");
  return conv2d(x, weight, bias, stride_, padding_, dilation_, groups_);
}

std::string Conv2d::extra_repr() const {
  std::string s = std::to_string(in_) + ", " + std::to_string(out_) + ", kernel_size=" +
                  pair_str(kernel_) + ", stride=" + pair_str(stride_);
  if (!(padding_ == Size2(0))) s += ", padding=" + pair_str(padding_);
  if (!(dilation_ == Size2(1))) s += ", dilation=" + pair_str(dilation_);
  if (groups_ != 1) s += ", groups=" + std::to_string(groups_);
  if (!bias.defined()) s += ", bias=false";
  return s;
}

}  // namespace kiln::nn
