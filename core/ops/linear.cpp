// linear: torch.nn.functional.linear with an optional GELU (tanh), as one GEMM whose epilogue
// adds the bias and applies the activation (cuBLASLt epilogues on CUDA, one pass over the
// output on the CPU). The GELU's input is kept for backward.
//
// Backward, for z = x @ w^T + b and y = act(z):
//   dz = g * gelu'(z)   (g itself without an activation)
//   dx = dz @ w         one GEMM
//   dw = dz^T @ x       one GEMM, written in w's [out, in] layout; db = the sum of dz's rows,
//                       folded into the same GEMM where the device can (cuBLASLt's BGRADB)
// Why the GELU gradient is not a GEMM epilogue here: cuBLASLt's DGELU multiplies a GEMM's
// output by gelu'(aux), which fits the GEMM *after* the GELU (llm.c fuses it into fc_proj's
// dx), not this op, whose own GEMMs all run after dz is known. One elementwise pass does it.
#include "core/dispatch/linear.h"

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/dispatch/elementwise.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<bool(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b,
                  Activation act)>
    linear_stub{"linear"};
DispatchStub<bool(Tensor& grad_w, Tensor& grad_b, const Tensor& dz, const Tensor& x)>
    linear_weight_grad_stub{"linear_weight_grad"};

namespace {

void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  KILN_CHECK(x.defined() && weight.defined(), "linear: input and weight must be defined");
  KILN_CHECK(weight.dim() == 2, "linear: expected weight [out_features, in_features], got ",
             weight.meta_str());
  KILN_CHECK(x.dim() >= 1, "linear: expected input [..., in_features], got ", x.meta_str());
  KILN_CHECK(x.size(-1) == weight.size(1), "linear: input ", x.meta_str(), " does not end in weight ",
             weight.meta_str(), "'s in_features ", weight.size(1), " (weight is [out_features, in_features])");
  KILN_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)), "linear: bias ",
             bias.meta_str(), " does not match weight ", weight.meta_str(), " (expected [",
             weight.size(0), "])");
  for (const Tensor* t : {&weight, &bias}) {
    if (!t->defined()) continue;
    KILN_CHECK(t->device() == x.device(), "linear: input ", x.meta_str(), ", weight ", weight.meta_str(),
               " and bias ", bias.meta_str(), " must be on one device");
    KILN_CHECK(t->dtype() == x.dtype(), "linear: input ", x.meta_str(), ", weight ", weight.meta_str(),
               " and bias ", bias.meta_str(), " must have one dtype");
  }
  KILN_CHECK(is_floating(x.dtype()), "linear: expected floating tensors, got ", x.meta_str());
}

// A row-major matrix that BLAS reads directly: unit-stride rows, leading dimension >= cols
// (strides of size-1 dims do not matter). A copy when `t` is not one.
Tensor row_major(const Tensor& t) {
  const int64_t rows = t.size(0), cols = t.size(1);
  const bool ok = (cols <= 1 || t.stride(1) == 1) && (rows <= 1 || t.stride(0) >= cols);
  return ok ? t : t.contiguous();
}

// x [..., in] as [N, in]: a view when the leading dims fold (a [B, T, C] activation, a slice
// of one), else a copy.
Tensor as_rows(const Tensor& x, int64_t in) {
  const int64_t n = x.dim() == 1 ? 1 : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  return row_major(x.reshape({n, in}));
}

// What a device without a fused kernel for this case computes: the same result from matmul,
// add and gelu. `pre` receives the GELU's input.
Tensor compose_forward(const Tensor& x2, const Tensor& w, const Tensor& b, Activation act, Tensor& pre) {
  Tensor z = matmul(x2, w.t());
  if (b.defined()) z = add(z, b);
  if (act == Activation::none) return z;
  pre = z;
  return gelu(z);
}

}  // namespace

Tensor linear(const Tensor& x_arg, const Tensor& weight_arg, const Tensor& bias_arg, Activation activation) {
  // bf16 GEMM with f32 accumulation under autocast; the casts are differentiable, so f32
  // parameters get f32 gradients.
  const Tensor x = autocast_input(x_arg), weight = autocast_input(weight_arg), bias = autocast_input(bias_arg);
  check_args(x, weight, bias);

  const int64_t in = weight.size(1), out_features = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  const bool gelu_act = activation == Activation::gelu;

  Tensor x2, w, pre, y;
  {
    NoGradGuard no_grad;
    AutocastGuard no_autocast(DType::bf16, false);  // the operands are already cast
    x2 = as_rows(x, in);
    w = row_major(weight);
    const Tensor b = bias.defined() && bias.stride(0) != 1 ? bias.contiguous() : bias;
    const int64_t n = x2.size(0);
    bool fused = false;
    if (n > 0 && in > 0 && out_features > 0) {
      y = empty({n, out_features}, x.options());
      if (gelu_act) pre = empty({n, out_features}, x.options());
      fused = linear_stub(x.device(), y, pre, x2, w, b, activation);
    }
    if (!fused) {
      pre = Tensor();
      y = compose_forward(x2, w, b, activation, pre);
    }
    y = y.view(out_shape);
  }

  const bool want_x = x.requires_grad(), want_w = weight.requires_grad();
  const bool want_b = bias.defined() && bias.requires_grad();
  if (!needs_grad({&x, &weight, &bias})) return y;
  // Each gradient reads only what it needs: dx the weight, dw the input, both the GELU input.
  record("LinearBackward", y, {&x, &weight, &bias},
         [xs = SavedTensor(want_w ? x2 : Tensor()), ws = SavedTensor(want_x ? w : Tensor()),
          pres = SavedTensor(pre), x_shape = x.shape(), n = x2.size(0), in, out_features, gelu_act,
          want_x, want_w, want_b, dtype = x.dtype()](const Tensor& grad) -> std::vector<Tensor> {
           NoGradGuard no_grad;
           AutocastGuard no_autocast(DType::bf16, false);  // gradients keep the forward's dtypes
           const Tensor g = grad.to(dtype).reshape({n, out_features}).contiguous();
           Tensor dz = g;
           if (gelu_act) {
             const Tensor z = pres.unpack("LinearBackward");
             dz = empty(g.shape(), g.options());
             if (dz.numel() > 0) binary_stub(g.device(), BinaryOp::gelu_backward, dz, g, z);
           }
           Tensor dx, dw, db;
           if (want_x) dx = matmul(dz, ws.unpack("LinearBackward")).reshape(x_shape);
           if (want_w) {
             const Tensor x2v = xs.unpack("LinearBackward");
             bool fused = false;
             if (n > 0 && in > 0 && out_features > 0) {
               dw = empty({out_features, in}, dz.options());
               if (want_b) db = empty({out_features}, dz.options());
               fused = linear_weight_grad_stub(dz.device(), dw, db, dz, x2v);
             }
             if (!fused) dw = matmul(dz.t(), x2v);  // a transposed operand is a BLAS flag, not a copy
             if (!fused && want_b) db = sum(dz, {0});
           } else if (want_b) {
             db = sum(dz, {0});
           }
           return {dx, dw, db};
         });
  return y;
}

}  // namespace kiln
