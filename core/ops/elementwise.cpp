// Elementwise ops: dtype promotion, broadcasting, device placement, and each op's backward.
// The kernels (kernels/cpu/elementwise.cpp, kernels/cuda/elementwise.cu) only ever see
// operands already promoted to one dtype and broadcast to the output shape.
//
// Backward formulas are written with these same ops, so they run on any device; the engine
// runs them under no-grad. Saved outputs are detached first: an output's node holding the
// output itself would be a reference cycle.
#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <vector>

#include "core/autograd.h"
#include "core/dispatch/elementwise.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(UnaryOp op, Tensor& out, const Tensor& in, double a, double b)> unary_stub{
    "unary"};
DispatchStub<void(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b)> binary_stub{
    "binary"};
DispatchStub<void(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b)> where_stub{
    "where"};

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

using Grads = std::vector<Tensor>;

bool is_whole(double v) { return std::isfinite(v) && v == std::trunc(v); }

// exp, log, tanh, ... compute integer inputs in f32, like PyTorch.
DType float_dtype(DType t) { return is_floating(t) ? t : DType::f32; }

// The dtype of `tensor op scalar`. PyTorch decides by the Python type of the scalar, which a
// double cannot carry; here integer tensors stay integers when every scalar is a whole
// number (bool becomes i64), and compute in f32 otherwise.
DType scalar_op_dtype(DType t, bool whole_scalars) {
  if (is_floating(t)) return t;
  if (!whole_scalars) return DType::f32;
  return t == DType::b8 ? DType::i64 : t;
}

// The device an op over `operands` runs on. A 0-dim CPU tensor may join CUDA operands, as a
// Python scalar would in PyTorch; any other mix of devices is an error.
Device common_device(const char* op, std::initializer_list<const Tensor*> operands) {
  const Tensor* anchor = nullptr;
  for (const Tensor* t : operands)
    if (!anchor || (anchor->device().is_cpu() && anchor->dim() == 0)) anchor = t;
  for (const Tensor* t : operands) {
    const bool cpu_scalar = t->device().is_cpu() && t->dim() == 0;
    KILN_CHECK(t->device() == anchor->device() || cpu_scalar, op,
               ": operands are on different devices: ", anchor->meta_str(), " and ",
               t->meta_str());
  }
  return anchor->device();
}

Shape broadcast_for(const char* op, const Tensor& a, const Tensor& b) {
  try {
    return broadcast_shapes(a.shape(), b.shape());
  } catch (const Error& e) {
    KILN_FAIL(op, ": ", a.meta_str(), " and ", b.meta_str(), " do not broadcast (", e.what(),
              ")");
  }
}

// `t` moved to `device`, converted to `dtype` and expanded to `shape` (views where possible).
// Callers hold a NoGradGuard: these steps are internal, not graph nodes.
Tensor prepared(const Tensor& t, Device device, DType dtype, const Shape& shape) {
  Tensor r = t;
  if (r.device() != device) r = r.to(device);
  if (r.dtype() != dtype) r = r.to(dtype);
  if (r.shape() != shape) r = r.expand(shape);
  return r;
}

// Where an input's gradient must land: its shape (undoing broadcasting), dtype (undoing
// promotion) and device. Kept instead of the input itself so that backward does not hold
// the input's memory alive.
struct GradTarget {
  Shape shape;
  DType dtype;
  Device device;
  bool needed;
  explicit GradTarget(const Tensor& t)
      : shape(t.shape()), dtype(t.dtype()), device(t.device()), needed(t.requires_grad()) {}

  Tensor operator()(const Tensor& g) const {
    if (!needed) return Tensor();
    Tensor r = g.shape() == shape ? g : sum_to(g, shape);
    if (r.dtype() != dtype) r = r.to(dtype);
    if (r.device() != device) r = r.to(device);
    return r;
  }
};

Tensor zero_like_scalar(const Tensor& g) { return scalar_tensor(0.0, g.options()); }

// ---- forward helpers (no graph recorded here)

Tensor unary_forward(UnaryOp op, const Tensor& x, DType dtype, double a = 0, double b = 0) {
  NoGradGuard no_grad;
  const Tensor in = x.dtype() == dtype ? x : x.to(dtype);
  Tensor out = empty(x.shape(), {.dtype = dtype, .device = x.device()});
  unary_stub(out.device(), op, out, in, a, b);
  return out;
}

// a op b with both operands promoted to `compute` and broadcast; the output is `out_dtype`.
Tensor binary_forward(const char* name, BinaryOp op, const Tensor& a, const Tensor& b,
                      DType compute, DType out_dtype) {
  NoGradGuard no_grad;
  const Device device = common_device(name, {&a, &b});
  const Shape shape = broadcast_for(name, a, b);
  const Tensor pa = prepared(a, device, compute, shape);
  const Tensor pb = prepared(b, device, compute, shape);
  Tensor out = empty(shape, {.dtype = out_dtype, .device = device});
  binary_stub(device, op, out, pa, pb);
  return out;
}

Tensor binary_forward(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  const DType dtype = promote_types(a.dtype(), b.dtype());
  return binary_forward(name, op, a, b, dtype, dtype);
}

// g * f'(saved) through one of the fused backward kernels (relu_backward, ...).
Tensor fused_backward(BinaryOp op, const Tensor& g, const Tensor& saved) {
  return binary_forward("backward", op, g, saved);
}


}  // namespace

// ---------------------------------------------------------------------------------------
// Unary

Tensor neg(const Tensor& x) {
  KILN_CHECK(x.dtype() != DType::b8, "neg: not defined for bool tensors, got ", x.meta_str());
  Tensor y = unary_forward(UnaryOp::neg, x, x.dtype());
  if (needs_grad({&x}))
    record("NegBackward", y, {&x}, [](const Tensor& g) { return Grads{neg(g)}; });
  return y;
}

Tensor exp(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::exp, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))
    record("ExpBackward", y, {&x}, [saved = SavedTensor(y.detach())](const Tensor& g) {
      return Grads{mul(g, saved.unpack("ExpBackward"))};
    });
  return y;
}

Tensor log(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::log, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))
    record("LogBackward", y, {&x}, [saved = SavedTensor(x)](const Tensor& g) {
      return Grads{div(g, saved.unpack("LogBackward"))};
    });
  return y;
}

Tensor sqrt(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::sqrt, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))  // d sqrt(x) = 1 / (2 sqrt(x))
    record("SqrtBackward", y, {&x}, [saved = SavedTensor(y.detach())](const Tensor& g) {
      return Grads{div(g, mul(saved.unpack("SqrtBackward"), 2.0))};
    });
  return y;
}

Tensor rsqrt(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::rsqrt, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))  // d x^(-1/2) = -x^(-3/2) / 2 = -y^3 / 2
    record("RsqrtBackward", y, {&x}, [saved = SavedTensor(y.detach())](const Tensor& g) {
      return Grads{mul(mul(g, pow(saved.unpack("RsqrtBackward"), 3.0)), -0.5)};
    });
  return y;
}

Tensor abs(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::abs, x, x.dtype());
  if (needs_grad({&x}))
    record("AbsBackward", y, {&x}, [saved = SavedTensor(x)](const Tensor& g) {
      return Grads{mul(g, sign(saved.unpack("AbsBackward")))};
    });
  return y;
}

Tensor relu(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::relu, x, x.dtype());
  if (needs_grad({&x}))
    record("ReluBackward", y, {&x}, [saved = SavedTensor(x)](const Tensor& g) {
      return Grads{fused_backward(BinaryOp::relu_backward, g, saved.unpack("ReluBackward"))};
    });
  return y;
}

Tensor gelu(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::gelu, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))
    record("GeluBackward", y, {&x}, [saved = SavedTensor(x)](const Tensor& g) {
      return Grads{fused_backward(BinaryOp::gelu_backward, g, saved.unpack("GeluBackward"))};
    });
  return y;
}

Tensor tanh(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::tanh, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))
    record("TanhBackward", y, {&x}, [saved = SavedTensor(y.detach())](const Tensor& g) {
      return Grads{fused_backward(BinaryOp::tanh_backward, g, saved.unpack("TanhBackward"))};
    });
  return y;
}

Tensor sigmoid(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::sigmoid, x, float_dtype(x.dtype()));
  if (needs_grad({&x}))
    record("SigmoidBackward", y, {&x}, [saved = SavedTensor(y.detach())](const Tensor& g) {
      return Grads{
          fused_backward(BinaryOp::sigmoid_backward, g, saved.unpack("SigmoidBackward"))};
    });
  return y;
}

Tensor sign(const Tensor& x) {
  Tensor y = unary_forward(UnaryOp::sign, x, x.dtype());
  if (needs_grad({&x}))  // piecewise constant: zero almost everywhere, as in PyTorch
    record("SignBackward", y, {&x}, [](const Tensor& g) { return Grads{zeros_like(g)}; });
  return y;
}

Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max) {
  KILN_CHECK(min || max, "clamp: at least one of min and max must be given (", x.meta_str(),
             ")");
  const bool whole = (!min || is_whole(*min)) && (!max || is_whole(*max));
  Tensor y = unary_forward(UnaryOp::clamp, x, scalar_op_dtype(x.dtype(), whole),
                           min.value_or(-kInf), max.value_or(kInf));
  if (needs_grad({&x}))
    // The gradient passes where min <= x <= max, bounds included, like PyTorch.
    record("ClampBackward", y, {&x}, [saved = SavedTensor(x), min, max](const Tensor& g) {
      const Tensor x = saved.unpack("ClampBackward");
      const Tensor zero = zero_like_scalar(g);
      Tensor gx = g;
      if (min) gx = where(ge(x, scalar_tensor(*min, x.options())), gx, zero);
      if (max) gx = where(le(x, scalar_tensor(*max, x.options())), gx, zero);
      return Grads{gx};
    });
  return y;
}

Tensor pow(const Tensor& x, double exponent) {
  // Integers stay integers for whole, non-negative exponents (x^-1 is not an integer).
  const DType dtype = scalar_op_dtype(x.dtype(), is_whole(exponent) && exponent >= 0);
  Tensor y = unary_forward(UnaryOp::pow_scalar, x, dtype, exponent);
  if (needs_grad({&x}))
    record("PowBackward", y, {&x}, [saved = SavedTensor(x), exponent](const Tensor& g) {
      if (exponent == 0.0) return Grads{zeros_like(g)};  // not 0 * x^-1, which is NaN at 0
      const Tensor x = saved.unpack("PowBackward");
      const Tensor d = exponent == 2.0 ? mul(x, 2.0) : mul(pow(x, exponent - 1), exponent);
      return Grads{mul(g, d)};
    });
  return y;
}

Tensor square(const Tensor& x) { return pow(x, 2.0); }

// ---------------------------------------------------------------------------------------
// Binary

namespace {

// a + sign*alpha*b, sign = +1 for add, -1 for sub.
Tensor add_or_sub(const char* name, BinaryOp op, const Tensor& a, const Tensor& b, double alpha) {
  const DType dtype = promote_types(a.dtype(), b.dtype());
  KILN_CHECK(is_floating(dtype) || is_whole(alpha), name, ": alpha ", alpha,
             " needs a floating dtype, got ", a.meta_str(), " and ", b.meta_str());
  if (op == BinaryOp::sub)
    KILN_CHECK(dtype != DType::b8, "sub: not defined for bool tensors, got ", a.meta_str(),
               " and ", b.meta_str(), " (use ne for xor)");
  Tensor y;
  {
    NoGradGuard no_grad;
    const Tensor scaled_b = alpha == 1.0 ? b : mul(b, alpha);
    y = binary_forward(name, op, a, scaled_b, dtype, dtype);
  }
  if (needs_grad({&a, &b})) {
    const double b_scale = op == BinaryOp::sub ? -alpha : alpha;
    record(op == BinaryOp::sub ? "SubBackward" : "AddBackward", y, {&a, &b},
           [ta = GradTarget(a), tb = GradTarget(b), b_scale](const Tensor& g) {
             return Grads{ta(g), tb.needed ? tb(b_scale == 1.0 ? g : mul(g, b_scale)) : Tensor()};
           });
  }
  return y;
}

// maximum/minimum: the gradient goes to the operand that won; ties split it half and half,
// like PyTorch. `wins(a, b)` is gt for maximum, lt for minimum.
Tensor extremum(const char* name, BinaryOp op, Tensor (*wins)(const Tensor&, const Tensor&),
                const Tensor& a, const Tensor& b) {
  Tensor y = binary_forward(name, op, a, b);
  const char* node = op == BinaryOp::maximum ? "MaximumBackward" : "MinimumBackward";
  if (needs_grad({&a, &b}))
    record(node, y, {&a, &b},
           [sa = SavedTensor(a), sb = SavedTensor(b), ta = GradTarget(a), tb = GradTarget(b),
            wins, node](const Tensor& g) {
             const Tensor a = sa.unpack(node), b = sb.unpack(node);
             const Tensor zero = zero_like_scalar(g);
             const Tensor tie = where(eq(a, b), mul(g, 0.5), zero);
             return Grads{ta.needed ? ta(where(wins(a, b), g, tie)) : Tensor(),
                          tb.needed ? tb(where(wins(b, a), g, tie)) : Tensor()};
           });
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  return add_or_sub("add", BinaryOp::add, a, b, alpha);
}

Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  return add_or_sub("sub", BinaryOp::sub, a, b, alpha);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary_forward("mul", BinaryOp::mul, a, b);
  if (needs_grad({&a, &b})) {
    const GradTarget ta(a), tb(b);
    // Each gradient needs the other operand only.
    record("MulBackward", y, {&a, &b},
           [sa = tb.needed ? SavedTensor(a) : SavedTensor(),
            sb = ta.needed ? SavedTensor(b) : SavedTensor(), ta, tb](const Tensor& g) {
             return Grads{ta.needed ? ta(mul(g, sb.unpack("MulBackward"))) : Tensor(),
                          tb.needed ? tb(mul(g, sa.unpack("MulBackward"))) : Tensor()};
           });
  }
  return y;
}

Tensor div(const Tensor& a, const Tensor& b) {
  // True division: integers divide in f32, like torch.div.
  const DType dtype = float_dtype(promote_types(a.dtype(), b.dtype()));
  Tensor y = binary_forward("div", BinaryOp::div, a, b, dtype, dtype);
  if (needs_grad({&a, &b}))
    record("DivBackward", y, {&a, &b},
           [sa = SavedTensor(a), sb = SavedTensor(b), ta = GradTarget(a),
            tb = GradTarget(b)](const Tensor& g) {
             const Tensor b = sb.unpack("DivBackward");
             Tensor ga, gb;
             if (ta.needed) ga = ta(div(g, b));
             if (tb.needed)  // d(a/b)/db = -a / b^2
               gb = tb(neg(div(mul(g, sa.unpack("DivBackward")), mul(b, b))));
             return Grads{ga, gb};
           });
  return y;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor y = binary_forward("pow", BinaryOp::pow, a, b);
  if (needs_grad({&a, &b}))
    record("PowBackward", y, {&a, &b},
           [sa = SavedTensor(a), sb = SavedTensor(b), sy = SavedTensor(y.detach()),
            ta = GradTarget(a), tb = GradTarget(b)](const Tensor& g) {
             const Tensor a = sa.unpack("PowBackward"), b = sb.unpack("PowBackward");
             const Tensor zero = zero_like_scalar(g);
             Tensor ga, gb;
             if (ta.needed) {  // b a^(b-1); 0 where b == 0 (not 0 * a^-1, NaN at a == 0)
               const Tensor d = mul(b, pow(a, add(b, -1.0)));
               ga = ta(where(eq(b, zero), zero, mul(g, d)));
             }
             if (tb.needed) {  // a^b log(a); 0 where a == 0 and b >= 0, as in PyTorch
               const Tensor d = mul(sy.unpack("PowBackward"), log(a));
               const Tensor gd = mul(g, d);
               gb = tb(where(eq(a, zero), where(ge(b, zero), zero, gd), gd));
             }
             return Grads{ga, gb};
           });
  return y;
}

Tensor maximum(const Tensor& a, const Tensor& b) {
  return extremum("maximum", BinaryOp::maximum, &gt, a, b);
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  return extremum("minimum", BinaryOp::minimum, &lt, a, b);
}

// ---- with a scalar: one affine pass, x * scale + shift

Tensor add(const Tensor& a, double b) {
  Tensor y = unary_forward(UnaryOp::affine, a, scalar_op_dtype(a.dtype(), is_whole(b)), 1.0, b);
  if (needs_grad({&a}))
    record("AddBackward", y, {&a}, [](const Tensor& g) { return Grads{g}; });
  return y;
}

Tensor mul(const Tensor& a, double b) {
  Tensor y = unary_forward(UnaryOp::affine, a, scalar_op_dtype(a.dtype(), is_whole(b)), b, 0.0);
  if (needs_grad({&a}))
    record("MulBackward", y, {&a}, [b](const Tensor& g) { return Grads{mul(g, b)}; });
  return y;
}

// ---- comparisons: bool results, no gradient

Tensor eq(const Tensor& a, const Tensor& b) {
  return binary_forward("eq", BinaryOp::eq, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return binary_forward("ne", BinaryOp::ne, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return binary_forward("lt", BinaryOp::lt, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}
Tensor le(const Tensor& a, const Tensor& b) {
  return binary_forward("le", BinaryOp::le, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return binary_forward("gt", BinaryOp::gt, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}
Tensor ge(const Tensor& a, const Tensor& b) {
  return binary_forward("ge", BinaryOp::ge, a, b, promote_types(a.dtype(), b.dtype()), DType::b8);
}

// ---------------------------------------------------------------------------------------
// where

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  KILN_CHECK(cond.dtype() == DType::b8, "where: the condition must be bool, got ",
             cond.meta_str());
  const DType dtype = promote_types(a.dtype(), b.dtype());
  Tensor y;
  {
    NoGradGuard no_grad;
    const Device device = common_device("where", {&cond, &a, &b});
    Shape shape;
    try {
      shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape()), b.shape());
    } catch (const Error& e) {
      KILN_FAIL("where: condition ", cond.meta_str(), ", ", a.meta_str(), " and ", b.meta_str(),
                " do not broadcast (", e.what(), ")");
    }
    const Tensor pc = prepared(cond, device, DType::b8, shape);
    const Tensor pa = prepared(a, device, dtype, shape);
    const Tensor pb = prepared(b, device, dtype, shape);
    y = empty(shape, {.dtype = dtype, .device = device});
    where_stub(device, y, pc, pa, pb);
  }
  if (needs_grad({&a, &b}))
    record("WhereBackward", y, {&a, &b},
           [sc = SavedTensor(cond), ta = GradTarget(a), tb = GradTarget(b)](const Tensor& g) {
             const Tensor cond = sc.unpack("WhereBackward");
             const Tensor zero = zero_like_scalar(g);
             return Grads{ta.needed ? ta(where(cond, g, zero)) : Tensor(),
                          tb.needed ? tb(where(cond, zero, g)) : Tensor()};
           });
  return y;
}

}  // namespace kiln
