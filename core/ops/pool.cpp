// max_pool2d, avg_pool2d and adaptive_avg_pool2d: argument checks, output sizes (PyTorch's
// formulas, ceil_mode=False, dilation 1) and the backward passes. The kernels
// (core/dispatch/pool.h) see contiguous [N*C, H, W] planes.
#include "core/dispatch/pool.h"

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, Tensor& indices, const Tensor& input, const Pool2dGeometry& g)>
    max_pool2d_stub{"max_pool2d"};
DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Tensor& indices,
                  const Pool2dGeometry& g)>
    max_pool2d_backward_stub{"max_pool2d_backward"};
DispatchStub<void(Tensor& out, const Tensor& input, const Pool2dGeometry& g, bool count_include_pad)>
    avg_pool2d_stub{"avg_pool2d"};
DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g,
                  bool count_include_pad)>
    avg_pool2d_backward_stub{"avg_pool2d_backward"};
DispatchStub<void(Tensor& out, const Tensor& input, const Pool2dGeometry& g)>
    adaptive_avg_pool2d_stub{"adaptive_avg_pool2d"};
DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g)>
    adaptive_avg_pool2d_backward_stub{"adaptive_avg_pool2d_backward"};

namespace {

std::string size2_str(Size2 s) { return "(" + std::to_string(s.h) + ", " + std::to_string(s.w) + ")"; }

void check_input(const char* op, const Tensor& input) {
  KILN_CHECK(input.defined(), op, ": input must be defined");
  KILN_CHECK(input.dim() == 3 || input.dim() == 4, op, ": expected input [N, C, H, W] or [C, H, W], got ",
             input.meta_str());
  KILN_CHECK(is_floating(input.dtype()), op, ": input must be a floating type, got ", input.meta_str());
  KILN_CHECK(input.size(-1) > 0 && input.size(-2) > 0, op, ": input ", input.meta_str(),
             " has an empty spatial dim");
}

// The output shape: the input's leading dims, then (out_h, out_w).
Shape out_shape(const Tensor& input, int64_t out_h, int64_t out_w) {
  Shape s = input.shape();
  s[s.size() - 2] = out_h;
  s[s.size() - 1] = out_w;
  return s;
}

// Geometry of a fixed-window pool (max, avg) after PyTorch's checks.
Pool2dGeometry window_geometry(const char* op, const Tensor& input, Size2 kernel, Size2 stride,
                               Size2 padding) {
  check_input(op, input);
  KILN_CHECK(kernel.h >= 1 && kernel.w >= 1, op, ": kernel must be positive, got ", size2_str(kernel));
  KILN_CHECK(stride.h >= 1 && stride.w >= 1, op, ": stride must be positive, got ", size2_str(stride));
  KILN_CHECK(padding.h >= 0 && padding.w >= 0 && padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2,
             op, ": padding ", size2_str(padding), " must be between 0 and half the kernel ",
             size2_str(kernel));
  Pool2dGeometry g;
  g.in_h = input.size(-2);
  g.in_w = input.size(-1);
  g.planes = input.numel() / (g.in_h * g.in_w);
  g.kernel_h = kernel.h;
  g.kernel_w = kernel.w;
  g.stride_h = stride.h;
  g.stride_w = stride.w;
  g.pad_h = padding.h;
  g.pad_w = padding.w;
  KILN_CHECK(kernel.h <= g.in_h + 2 * padding.h && kernel.w <= g.in_w + 2 * padding.w, op, ": kernel ",
             size2_str(kernel), " is larger than the padded input ",
             size2_str({g.in_h + 2 * padding.h, g.in_w + 2 * padding.w}), " (input ", input.meta_str(),
             ")");
  g.out_h = (g.in_h + 2 * g.pad_h - g.kernel_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_w - g.kernel_w) / g.stride_w + 1;
  return g;
}

}  // namespace

Tensor max_pool2d(const Tensor& input, Size2 kernel, Size2 stride, Size2 padding) {
  const Pool2dGeometry g = window_geometry("max_pool2d", input, kernel, stride, padding);
  Tensor x = input.detach().contiguous();
  Tensor out = Tensor::empty(out_shape(input, g.out_h, g.out_w), input.options());
  Tensor indices = Tensor::empty(out.shape(), {.dtype = DType::i64, .device = input.device()});
  if (out.numel() > 0) max_pool2d_stub(x.device(), out, indices, x, g);
  record("MaxPool2dBackward", out, {&input},
         [is = SavedTensor(indices), g, shape = input.shape(),
          dtype = input.dtype()](const Tensor& grad) -> std::vector<Tensor> {
           Tensor gy = grad.to(dtype).contiguous();
           Tensor dx = Tensor::empty(shape, gy.options());
           if (dx.numel() > 0)
             max_pool2d_backward_stub(gy.device(), dx, gy, is.unpack("MaxPool2dBackward"), g);
           return {dx};
         });
  return out;
}

Tensor avg_pool2d(const Tensor& input, Size2 kernel, Size2 stride, Size2 padding,
                  bool count_include_pad) {
  const Pool2dGeometry g = window_geometry("avg_pool2d", input, kernel, stride, padding);
  Tensor x = input.detach().contiguous();
  Tensor out = Tensor::empty(out_shape(input, g.out_h, g.out_w), input.options());
  if (out.numel() > 0) avg_pool2d_stub(x.device(), out, x, g, count_include_pad);
  record("AvgPool2dBackward", out, {&input},
         [g, count_include_pad, shape = input.shape(),
          dtype = input.dtype()](const Tensor& grad) -> std::vector<Tensor> {
           Tensor gy = grad.to(dtype).contiguous();
           Tensor dx = Tensor::empty(shape, gy.options());
           if (dx.numel() > 0) avg_pool2d_backward_stub(gy.device(), dx, gy, g, count_include_pad);
           return {dx};
         });
  return out;
}

Tensor adaptive_avg_pool2d(const Tensor& input, Size2 output_size) {
  check_input("adaptive_avg_pool2d", input);
  KILN_CHECK(output_size.h >= 1 && output_size.w >= 1,
             "adaptive_avg_pool2d: output_size must be positive, got ", size2_str(output_size));
  Pool2dGeometry g;
  g.in_h = input.size(-2);
  g.in_w = input.size(-1);
  g.planes = input.numel() / (g.in_h * g.in_w);
  g.out_h = output_size.h;
  g.out_w = output_size.w;
  Tensor x = input.detach().contiguous();
  Tensor out = Tensor::empty(out_shape(input, g.out_h, g.out_w), input.options());
  if (out.numel() > 0) adaptive_avg_pool2d_stub(x.device(), out, x, g);
  record("AdaptiveAvgPool2dBackward", out, {&input},
         [g, shape = input.shape(), dtype = input.dtype()](const Tensor& grad) -> std::vector<Tensor> {
           Tensor gy = grad.to(dtype).contiguous();
           Tensor dx = Tensor::empty(shape, gy.options());
           if (dx.numel() > 0) adaptive_avg_pool2d_backward_stub(gy.device(), dx, gy, g);
           return {dx};
         });
  return out;
}

}  // namespace kiln
