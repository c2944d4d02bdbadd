// Elementwise kernels. Operands arrive broadcast to the output shape, with one dtype (the
// output's, except comparisons which write bool and where's bool condition).
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

enum class UnaryOp : uint8_t {
  neg, exp, log, sqrt, rsqrt, abs, relu, gelu, tanh, sigmoid, sign,
  clamp,       // min(max(x, a), b)
  pow_scalar,  // x^a
  affine,      // x*a + b (scalar add, sub, mul, div)
};

enum class BinaryOp : uint8_t {
  add, sub, mul, div, pow, maximum, minimum,
  eq, ne, lt, le, gt, ge,  // write bool
  // Backward helpers, one pass each: (grad, saved)
  relu_backward,     // g * (x > 0)
  gelu_backward,     // g * gelu'(x)
  tanh_backward,     // g * (1 - y^2), y = tanh(x)
  sigmoid_backward,  // g * y * (1 - y), y = sigmoid(x)
};

inline bool is_comparison(BinaryOp op) { return op >= BinaryOp::eq && op <= BinaryOp::ge; }

extern DispatchStub<void(UnaryOp op, Tensor& out, const Tensor& in, double a, double b)>
    unary_stub;
extern DispatchStub<void(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b)> binary_stub;
// out = cond ? a : b; cond is bool.
extern DispatchStub<void(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b)>
    where_stub;

}  // namespace kiln
