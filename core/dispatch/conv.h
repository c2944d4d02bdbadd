// 2-D convolution kernels. The op (core/ops/conv.cpp) checks the arguments, computes the
// geometry and hands the kernels contiguous NCHW tensors of one floating dtype, so a kernel
// only has to compute. The bias gradient is a plain sum over (N, OH, OW) done by the op.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

struct Conv2dGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
};

// out [N, O, OH, OW] = input [N, C, H, W] (*) weight [O, C/groups, kH, kW] + bias [O]; bias
// may be undefined.
extern DispatchStub<void(Tensor& out, const Tensor& input, const Tensor& weight, const Tensor& bias,
                         const Conv2dGeometry& g)>
    conv2d_stub;
// grad_input [N, C, H, W] from grad_out [N, O, OH, OW] and weight; overwrites grad_input.
extern DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Tensor& weight,
                         const Conv2dGeometry& g)>
    conv2d_backward_input_stub;
// grad_weight [O, C/groups, kH, kW] from grad_out and input; overwrites grad_weight.
extern DispatchStub<void(Tensor& grad_weight, const Tensor& grad_out, const Tensor& input,
                         const Conv2dGeometry& g)>
    conv2d_backward_weight_stub;

}  // namespace kiln
