// conv2d: checks arguments, computes the output geometry, and records the backward pass. The
// kernels (core/dispatch/conv.h) see contiguous NCHW tensors of one dtype: im2col + BLAS on
// the CPU, cuDNN on the GPU.
#include "core/dispatch/conv.h"

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& input, const Tensor& weight, const Tensor& bias,
                  const Conv2dGeometry& g)>
    conv2d_stub{"conv2d"};
DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Tensor& weight,
                  const Conv2dGeometry& g)>
    conv2d_backward_input_stub{"conv2d_backward_input"};
DispatchStub<void(Tensor& grad_weight, const Tensor& grad_out, const Tensor& input,
                  const Conv2dGeometry& g)>
    conv2d_backward_weight_stub{"conv2d_backward_weight"};

namespace {

std::string size2_str(Size2 s) { return "(" + std::to_string(s.h) + ", " + std::to_string(s.w) + ")"; }

void check_conv_args(const Tensor& input, const Tensor& weight, const Tensor& bias, Size2 stride,
                     Size2 padding, Size2 dilation, int64_t groups) {
  KILN_CHECK(input.defined() && weight.defined(), "conv2d: input and weight must be defined");
  KILN_CHECK(input.dim() == 4, "conv2d: expected input [N, C, H, W] (or [C, H, W]), got ",
             input.meta_str());
  KILN_CHECK(weight.dim() == 4, "conv2d: expected weight [O, C/groups, kH, kW], got ", weight.meta_str());
  KILN_CHECK(is_floating(input.dtype()), "conv2d: input must be a floating type, got ", input.meta_str());
  KILN_CHECK(weight.dtype() == input.dtype() && weight.device() == input.device(),
             "conv2d: weight ", weight.meta_str(), " does not match input ", input.meta_str(),
             " (dtype and device must agree)");
  KILN_CHECK(stride.h >= 1 && stride.w >= 1, "conv2d: stride must be positive, got ", size2_str(stride));
  KILN_CHECK(dilation.h >= 1 && dilation.w >= 1, "conv2d: dilation must be positive, got ",
             size2_str(dilation));
  KILN_CHECK(padding.h >= 0 && padding.w >= 0, "conv2d: padding must be non-negative, got ",
             size2_str(padding));
  KILN_CHECK(groups >= 1, "conv2d: groups must be positive, got ", groups);
  const int64_t C = input.size(1), O = weight.size(0);
  KILN_CHECK(C % groups == 0, "conv2d: groups=", groups, " does not divide the input's ", C,
             " channels (input ", input.meta_str(), ")");
  KILN_CHECK(O % groups == 0, "conv2d: groups=", groups, " does not divide the weight's ", O,
             " output channels (weight ", weight.meta_str(), ")");
  KILN_CHECK(weight.size(1) * groups == C, "conv2d: channel mismatch: input ", input.meta_str(),
             " has ", C, " channels but weight ", weight.meta_str(), " with groups=", groups,
             " expects ", weight.size(1) * groups);
  KILN_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1, "conv2d: empty kernel in weight ",
             weight.meta_str());
  if (bias.defined()) {
    KILN_CHECK(bias.dim() == 1 && bias.size(0) == O, "conv2d: bias ", bias.meta_str(),
               " does not match the weight's ", O, " output channels");
    KILN_CHECK(bias.dtype() == input.dtype() && bias.device() == input.device(), "conv2d: bias ",
               bias.meta_str(), " does not match input ", input.meta_str());
  }
  const int64_t kh = dilation.h * (weight.size(2) - 1) + 1, kw = dilation.w * (weight.size(3) - 1) + 1;
  const int64_t ph = input.size(2) + 2 * padding.h, pw = input.size(3) + 2 * padding.w;
  KILN_CHECK(kh <= ph && kw <= pw, "conv2d: kernel ", size2_str({kh, kw}),
             " (after dilation) is larger than the padded input ", size2_str({ph, pw}), " (input ",
             input.meta_str(), ", weight ", weight.meta_str(), ", padding ", size2_str(padding),
             ", dilation ", size2_str(dilation), ")");
#if defined(KILN_WITH_CUDA) && !defined(KILN_WITH_CUDNN)
  KILN_CHECK(!input.is_cuda(), "conv2d on ", input.device(),
             ": kiln's CUDA convolution uses cuDNN, and this build has none (cmake found no "
             "cudnn.h / libcudnn; set CUDNN_ROOT and reconfigure)");
#endif
}

Conv2dGeometry geometry_of(const Tensor& input, const Tensor& weight, Size2 stride, Size2 padding,
                           Size2 dilation, int64_t groups) {
  Conv2dGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride.h;
  g.stride_w = stride.w;
  g.pad_h = padding.h;
  g.pad_w = padding.w;
  g.dilation_h = dilation.h;
  g.dilation_w = dilation.w;
  g.groups = groups;
  g.out_h = (g.in_h + 2 * g.pad_h - g.dilation_h * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_w - g.dilation_w * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  return g;
}

// db[o] = sum of grad_out[:, o] over (N, OH, OW). 16-bit floats are summed in f32 and
// rounded once.
Tensor bias_grad(const Tensor& gy) {
  const bool narrow = gy.dtype() == DType::f16 || gy.dtype() == DType::bf16;
  Tensor db = sum(narrow ? gy.to(DType::f32) : gy, {0, 2, 3});
  return narrow ? db.to(gy.dtype()) : db;
}

Tensor conv2d_batched(const Tensor& input, const Tensor& weight, const Tensor& bias, Size2 stride,
                      Size2 padding, Size2 dilation, int64_t groups) {
  check_conv_args(input, weight, bias, stride, padding, dilation, groups);
  const Conv2dGeometry g = geometry_of(input, weight, stride, padding, dilation, groups);
  Tensor x = input.detach().contiguous(), w = weight.detach().contiguous();
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor out = Tensor::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (out.numel() > 0) {
    if (g.in_channels == 0) {  // an empty sum: the bias alone
      out.zero_();
      if (b.defined()) out.add_(b.view({1, g.out_channels, 1, 1}));
    } else {
      conv2d_stub(x.device(), out, x, w, b, g);
    }
  }

  // Save only what the wanted gradients read: the input for dW, the weight for dX.
  const bool want_input = input.requires_grad(), want_weight = weight.requires_grad();
  const bool want_bias = bias.defined() && bias.requires_grad();
  record("Conv2dBackward", out, {&input, &weight, &bias},
         [xs = SavedTensor(want_weight ? x : Tensor()), ws = SavedTensor(want_input ? w : Tensor()),
          g, want_input, want_weight, want_bias,
          dtype = input.dtype()](const Tensor& grad) -> std::vector<Tensor> {
           Tensor gy = grad.to(dtype).contiguous();
           Tensor dx, dw, db;
           const bool empty = gy.numel() == 0 || g.in_channels == 0;
           if (want_input) {
             Tensor wv = ws.unpack("Conv2dBackward");
             dx = Tensor::empty({g.batch, g.in_channels, g.in_h, g.in_w}, gy.options());
             if (empty) dx.zero_();
             else if (dx.numel() > 0) conv2d_backward_input_stub(gy.device(), dx, gy, wv, g);
           }
           if (want_weight) {
             Tensor xv = xs.unpack("Conv2dBackward");
             dw = Tensor::empty({g.out_channels, g.in_per_group(), g.kernel_h, g.kernel_w}, gy.options());
             if (empty) dw.zero_();
             else if (dw.numel() > 0) conv2d_backward_weight_stub(gy.device(), dw, gy, xv, g);
           }
           if (want_bias) db = bias_grad(gy);
           return {dx, dw, db};
         });
  return out;
}

}  // namespace

Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias, Size2 stride,
              Size2 padding, Size2 dilation, int64_t groups) {
  KILN_CHECK(input.defined(), "conv2d: input must be defined");
  // Unbatched [C, H, W], as PyTorch allows: a batch of one, through differentiable views.
  if (input.dim() == 3)
    return conv2d_batched(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0);
  return conv2d_batched(input, weight, bias, stride, padding, dilation, groups);
}

}  // namespace kiln
