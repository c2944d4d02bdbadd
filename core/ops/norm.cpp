// batch_norm, as torch.nn.functional.batch_norm. The kernels (core/dispatch/norm.h) do the
// passes over the input; this file checks arguments, turns the per-channel statistics into
// invstd and running-stat updates with ordinary ops on [C] tensors, and records the backward.
//
// Statistics and the per-channel values the kernels read (mean, invstd, weight, bias) are in
// the accumulation dtype: f32 for f32 and 16-bit inputs, f64 for f64 inputs.
#include "core/dispatch/norm.h"

#include <string>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& mean, Tensor& var, const Tensor& x, NormGeometry g)>
    batch_norm_stats_stub{"batch_norm_stats"};
DispatchStub<void(Tensor& y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                  const Tensor& weight, const Tensor& bias, NormGeometry g)>
    batch_norm_apply_stub{"batch_norm_apply"};
DispatchStub<void(Tensor& sum_dy, Tensor& sum_dy_xmu, const Tensor& dy, const Tensor& x,
                  const Tensor& mean, NormGeometry g)>
    batch_norm_backward_reduce_stub{"batch_norm_backward_reduce"};
DispatchStub<void(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& mean,
                  const Tensor& invstd, const Tensor& weight, const Tensor& sum_dy,
                  const Tensor& sum_dy_xmu, NormGeometry g)>
    batch_norm_backward_input_stub{"batch_norm_backward_input"};

namespace {

constexpr const char* kNode = "BatchNormBackward";

// A per-channel argument as the kernels read it, cut from the graph; undefined stays undefined.
Tensor as_per_channel(const Tensor& t, DType acc) {
  return t.defined() ? t.detach().to(acc).contiguous() : Tensor();
}

void check_per_channel(const Tensor& t, const char* name, const Tensor& input) {
  if (!t.defined()) return;
  KILN_CHECK(t.dim() == 1 && t.size(0) == input.size(1), "batch_norm: ", name, " ", t.meta_str(),
             " does not match the ", input.size(1), " channels of input ", input.meta_str(),
             " (expected [", input.size(1), "])");
  KILN_CHECK(is_floating(t.dtype()), "batch_norm: ", name, " must be a floating type, got ",
             t.meta_str());
  KILN_CHECK(t.device() == input.device(), "batch_norm: ", name, " ", t.meta_str(),
             " is not on the device of input ", input.meta_str());
}

void check_arguments(const Tensor& input, const Tensor& weight, const Tensor& bias,
                     const Tensor& running_mean, const Tensor& running_var, bool training,
                     double eps) {
  KILN_CHECK(input.dim() >= 2, "batch_norm: input must be [N, C] or [N, C, *], got ",
             input.meta_str());
  KILN_CHECK(is_floating(input.dtype()), "batch_norm: input must be a floating type, got ",
             input.meta_str());
  check_per_channel(weight, "weight", input);
  check_per_channel(bias, "bias", input);
  check_per_channel(running_mean, "running_mean", input);
  check_per_channel(running_var, "running_var", input);
  KILN_CHECK(running_mean.defined() == running_var.defined(),
             "batch_norm: running_mean and running_var must both be given or both be undefined");
  KILN_CHECK(training || running_mean.defined(),
             "batch_norm: eval mode (training=false) needs running_mean and running_var");
  KILN_CHECK(eps >= 0, "batch_norm: eps must be >= 0, got ", eps);
}

}  // namespace

Tensor batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum, double eps) {
  check_arguments(input, weight, bias, running_mean, running_var, training, eps);
  NormGeometry geo{input.size(0), input.size(1), 1};
  for (int64_t d = 2; d < input.dim(); ++d) geo.inner *= input.size(d);
  const int64_t count = geo.per_channel();
  KILN_CHECK(!training || count > 1,
             "batch_norm: expected more than 1 value per channel when training, got input ",
             input.meta_str());

  const Device device = input.device();
  const DType acc = accumulate_dtype(input.dtype());
  const TensorOptions acc_opts{acc, device};
  const Tensor x = input.detach().contiguous();
  const Tensor w = as_per_channel(weight, acc), b = as_per_channel(bias, acc);
  Tensor mean, invstd;
  {
    NoGradGuard no_grad;
    if (training) {
      mean = Tensor::empty({geo.channels}, acc_opts);
      Tensor var = Tensor::empty({geo.channels}, acc_opts);
      batch_norm_stats_stub(device, mean, var, x, geo);
      invstd = rsqrt(add(var, eps)).to(acc);
      if (running_mean.defined()) {
        // Running statistics track the unbiased variance, as PyTorch's do; normalising uses the
        // biased one.
        Tensor rm = running_mean, rv = running_var;  // handles: the updates land in the caller's
        rm.mul_(1.0 - momentum).add_(mean, momentum);
        rv.mul_(1.0 - momentum)
            .add_(mul(var, static_cast<double>(count) / static_cast<double>(count - 1)), momentum);
      }
    } else {
      // A copy: a later training step updates the running mean in place, and this backward
      // must still see the mean the forward used.
      mean = running_mean.detach().to(acc).clone();
      invstd = rsqrt(add(running_var.detach().to(acc), eps)).to(acc);
    }
  }

  Tensor out = Tensor::empty(input.shape(), input.options());
  if (out.numel() > 0) batch_norm_apply_stub(device, out, x, mean, invstd, w, b, geo);

  const bool need_dx = input.requires_grad();
  const bool need_dw = weight.defined() && weight.requires_grad();
  const bool need_db = bias.defined() && bias.requires_grad();
  const DType weight_dtype = weight.defined() ? weight.dtype() : acc;
  const DType bias_dtype = bias.defined() ? bias.dtype() : acc;
  record(kNode, out, {&input, &weight, &bias},
         [xs = SavedTensor(x), ms = SavedTensor(mean), is = SavedTensor(invstd),
          ws = SavedTensor(w), geo, training, need_dx, need_dw, need_db, acc, weight_dtype,
          bias_dtype](const Tensor& grad) -> std::vector<Tensor> {
           const Tensor xv = xs.unpack(kNode), mv = ms.unpack(kNode), iv = is.unpack(kNode);
           const Tensor wv = ws.unpack(kNode);  // undefined without affine weight
           const Tensor dy = grad.to(xv.dtype()).contiguous();
           const Device dev = xv.device();
           const TensorOptions opts{acc, dev};
           // In training mode the input gradient needs the sums too (the statistics depend on
           // the input); in eval mode only the weight and bias gradients do.
           Tensor sum_dy, sum_dy_xmu;
           if ((training && need_dx) || need_dw || need_db) {
             sum_dy = zeros({geo.channels}, opts);
             sum_dy_xmu = zeros({geo.channels}, opts);
             if (xv.numel() > 0)
               batch_norm_backward_reduce_stub(dev, sum_dy, sum_dy_xmu, dy, xv, mv, geo);
           }
           Tensor dx, dw, db;
           if (need_dx) {
             dx = Tensor::empty(xv.shape(), xv.options());
             if (dx.numel() > 0)
               batch_norm_backward_input_stub(dev, dx, dy, xv, mv, iv, wv,
                                              training ? sum_dy : Tensor(),
                                              training ? sum_dy_xmu : Tensor(), geo);
           }
           // dweight = sum(dy * xhat) = invstd * sum(dy * (x - mean)); dbias = sum(dy).
           if (need_dw) dw = mul(sum_dy_xmu, iv).to(weight_dtype);
           if (need_db) db = sum_dy.to(bias_dtype);
           return {dx, dw, db};
         });
  return out;
}

}  // namespace kiln
