// Elementwise ops on the CPU: values against naive loops in this file (contiguous,
// transposed, sliced and broadcast operands), dtype promotion, bool comparisons, where,
// gradients by finite differences in f64, and PyTorch's gradient conventions at kinks
// (clamp bounds, maximum/minimum ties).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using testing::rand_input;
using testing::uniform_values;

Tensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f32) {
  return from_vector(v, shape, {.dtype = dtype});
}

// An f64 leaf that requires grad, for gradcheck.
Tensor leaf(const std::vector<double>& v, const Shape& shape) {
  return tensor(v, shape, DType::f64).requires_grad_(true);
}

void expect_values(const Tensor& got, const std::vector<double>& want, double tol,
                   const std::string& what) {
  const std::vector<double> g = got.to_vector<double>();
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(g[i])) << what << " element " << i;
      continue;
    }
    EXPECT_NEAR(g[i], want[i], tol * std::max(1.0, std::abs(want[i])))
        << what << " element " << i;
  }
}

// The reference GELU, written from PyTorch's definition of approximate='tanh'.
double gelu_ref(double x) {
  const double pi = std::acos(-1.0);
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  double lo, hi;  // input range: inside the domain, and (gradcheck) away from kinks
};

std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, -2, 2},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }, -2, 2},
      {"log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 0.1, 3},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0.1,
       3},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); },
       [](double x) { return 1 / std::sqrt(x); }, 0.1, 3},
      {"abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::abs(x); }, -2, 2},
      {"relu", [](const Tensor& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0; }, -2,
       2},
      {"gelu", [](const Tensor& x) { return gelu(x); }, gelu_ref, -4, 4},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, -3,
       3},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); },
       [](double x) { return 1 / (1 + std::exp(-x)); }, -5, 5},
      {"sign", [](const Tensor& x) { return sign(x); },
       [](double x) { return double((x > 0) - (x < 0)); }, -2, 2},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); },
       [](double x) { return std::min(std::max(x, -0.5), 0.7); }, -2, 2},
      {"clamp_min", [](const Tensor& x) { return clamp(x, 0.3, std::nullopt); },
       [](double x) { return std::max(x, 0.3); }, -2, 2},
      {"clamp_max", [](const Tensor& x) { return clamp(x, std::nullopt, -0.3); },
       [](double x) { return std::min(x, -0.3); }, -2, 2},
      {"pow3", [](const Tensor& x) { return pow(x, 3.0); }, [](double x) { return x * x * x; }, -2,
       2},
      {"pow0.5", [](const Tensor& x) { return pow(x, 0.5); },
       [](double x) { return std::sqrt(x); }, 0.1, 3},
      {"pow-1.5", [](const Tensor& x) { return pow(x, -1.5); },
       [](double x) { return std::pow(x, -1.5); }, 0.2, 3},
      {"square", [](const Tensor& x) { return square(x); }, [](double x) { return x * x; }, -2, 2},
      {"add_scalar", [](const Tensor& x) { return x + 1.5; }, [](double x) { return x + 1.5; }, -2,
       2},
      {"rsub_scalar", [](const Tensor& x) { return 2.0 - x; }, [](double x) { return 2 - x; }, -2,
       2},
      {"mul_scalar", [](const Tensor& x) { return x * -3.0; }, [](double x) { return -3 * x; }, -2,
       2},
      {"div_scalar", [](const Tensor& x) { return x / 4.0; }, [](double x) { return x / 4; }, -2,
       2},
  };
}

TEST(Elementwise, UnaryValuesMatchReference) {
  for (const UnaryCase& c : unary_cases()) {
    for (DType dtype : {DType::f32, DType::f64}) {
      const double tol = dtype == DType::f32 ? 2e-6 : 1e-13;
      const Tensor x = tensor(uniform_values(35, c.lo, c.hi, 7, 0.05), {5, 7}, dtype);
      std::vector<double> want;
      for (double xv : x.to_vector<double>()) want.push_back(c.ref(xv));
      const Tensor y = c.op(x);
      EXPECT_EQ(y.dtype(), dtype) << c.name;
      EXPECT_EQ(y.shape(), (Shape{5, 7})) << c.name;
      expect_values(y, want, tol, std::string(c.name) + " " + std::string(dtype_name(dtype)));

      // Transposed (strided) input: the same values read in the view's order.
      const Tensor xt = x.t();
      std::vector<double> want_t;
      for (double xv : xt.to_vector<double>()) want_t.push_back(c.ref(xv));
      expect_values(c.op(xt), want_t, tol, std::string(c.name) + " transposed");
    }
  }
}

TEST(Elementwise, SixteenBitFloatsComputeInF32) {
  const std::vector<double> v = uniform_values(64, -3, 3, 11);
  for (DType dtype : {DType::bf16, DType::f16}) {
    const Tensor x = tensor(v, {8, 8}, dtype);
    const std::vector<double> xv = x.to_vector<double>();  // the rounded inputs
    std::vector<double> want_exp, want_gelu, want_prod;
    for (double a : xv) {
      want_exp.push_back(std::exp(a));
      want_gelu.push_back(gelu_ref(a));
      want_prod.push_back(a * a);
    }
    const double tol = dtype == DType::bf16 ? 1e-2 : 2e-3;  // one rounding of the result
    EXPECT_EQ(exp(x).dtype(), dtype);
    expect_values(exp(x), want_exp, tol, "exp 16-bit");
    expect_values(gelu(x), want_gelu, tol, "gelu 16-bit");
    expect_values(mul(x, x), want_prod, tol, "mul 16-bit");
  }
}

// out[i, j, k] = f(a[i, 0, k], b[j, 0]) for a [3, 1, 4], b [2, 1]: broadcasting both ways.
struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> ref;
  double lo, hi;
};

std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); },
       [](double a, double b) { return a + b; }, -2, 2},
      {"add_alpha", [](const Tensor& a, const Tensor& b) { return add(a, b, 2.5); },
       [](double a, double b) { return a + 2.5 * b; }, -2, 2},
      {"sub", [](const Tensor& a, const Tensor& b) { return a - b; },
       [](double a, double b) { return a - b; }, -2, 2},
      {"sub_alpha", [](const Tensor& a, const Tensor& b) { return sub(a, b, 0.5); },
       [](double a, double b) { return a - 0.5 * b; }, -2, 2},
      {"mul", [](const Tensor& a, const Tensor& b) { return a * b; },
       [](double a, double b) { return a * b; }, -2, 2},
      {"div", [](const Tensor& a, const Tensor& b) { return a / b; },
       [](double a, double b) { return a / b; }, 0.5, 2},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double a, double b) { return std::pow(a, b); }, 0.2, 2},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
       [](double a, double b) { return std::max(a, b); }, -2, 2},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
       [](double a, double b) { return std::min(a, b); }, -2, 2},
  };
}

TEST(Elementwise, BinaryBroadcastMatchesReference) {
  for (const BinaryCase& c : binary_cases()) {
    const std::vector<double> av = uniform_values(12, c.lo, c.hi, 3);
    const std::vector<double> bv = uniform_values(2, c.lo, c.hi, 4);
    for (DType dtype : {DType::f32, DType::f64}) {
      const Tensor y = c.op(tensor(av, {3, 1, 4}, dtype), tensor(bv, {2, 1}, dtype));
      ASSERT_EQ(y.shape(), (Shape{3, 2, 4})) << c.name;
      std::vector<double> want;
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 2; ++j)
          for (int k = 0; k < 4; ++k) want.push_back(c.ref(av[i * 4 + k], bv[j]));
      expect_values(y, want, dtype == DType::f32 ? 2e-6 : 1e-13, c.name);
    }
  }
}

TEST(Elementwise, BinaryNonContiguousMatchesReference) {
  for (const BinaryCase& c : binary_cases()) {
    // a: every other column of a [6, 8] tensor; b: a transposed [4, 6] tensor.
    const Tensor a = tensor(uniform_values(48, c.lo, c.hi, 5), {6, 8}).slice(1, 0, 8, 2);
    const Tensor b = tensor(uniform_values(24, c.lo, c.hi, 6), {4, 6}).t();
    ASSERT_FALSE(a.is_contiguous());
    ASSERT_FALSE(b.is_contiguous());
    const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
    std::vector<double> want;
    for (size_t i = 0; i < av.size(); ++i) want.push_back(c.ref(av[i], bv[i]));
    expect_values(c.op(a, b), want, 2e-6, c.name);
  }
}

TEST(Elementwise, NanPropagates) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Tensor x = tensor({nan, 1.0}, {2});
  expect_values(relu(x), {nan, 1.0}, 0, "relu");
  expect_values(clamp(x, 0.0, 0.5), {nan, 0.5}, 0, "clamp");
  expect_values(maximum(x, tensor({0.0, 0.0}, {2})), {nan, 1.0}, 0, "maximum");
  expect_values(minimum(tensor({0.0, 0.0}, {2}), x), {nan, 0.0}, 0, "minimum");
}

TEST(Elementwise, DtypePromotion) {
  const Tensor i64 = from_vector(std::vector<int64_t>{7, -2, 3}, {3});
  const Tensor i32 = i64.to(DType::i32);
  const Tensor f32 = tensor({0.5, 1.5, -1.0}, {3});
  const Tensor f64 = f32.to(DType::f64);

  EXPECT_EQ(add(i64, f32).dtype(), DType::f32);
  expect_values(add(i64, f32), {7.5, -0.5, 2.0}, 0, "i64 + f32");
  EXPECT_EQ(mul(i32, f64).dtype(), DType::f64);
  EXPECT_EQ(add(i64, i32).dtype(), DType::i64);
  EXPECT_EQ(add(i32, i64.to(DType::u8)).dtype(), DType::i32);
  EXPECT_EQ(add(f32.to(DType::bf16), f32).dtype(), DType::f32);
  EXPECT_EQ(add(f32.to(DType::bf16), f32.to(DType::f16)).dtype(), DType::f32);
  EXPECT_EQ(add(f32.to(DType::b8), i64).dtype(), DType::i64);

  // True division and float-only functions turn integers into f32.
  EXPECT_EQ(div(i64, i64.to(DType::i32)).dtype(), DType::f32);
  expect_values(div(i64, from_vector(std::vector<int64_t>{2, 4, 2}, {3})), {3.5, -0.5, 1.5}, 0,
                "int / int");
  EXPECT_EQ(exp(i64).dtype(), DType::f32);
  expect_values(sqrt(from_vector(std::vector<int64_t>{4, 9}, {2})), {2, 3}, 0, "sqrt(int)");

  // Integer-preserving ops stay integers.
  EXPECT_EQ(relu(i32).dtype(), DType::i32);
  expect_values(relu(i32), {7, 0, 3}, 0, "relu(int)");
  expect_values(abs(i64), {7, 2, 3}, 0, "abs(int)");
  expect_values(neg(i64), {-7, 2, -3}, 0, "neg(int)");
  expect_values(sign(i64), {1, -1, 1}, 0, "sign(int)");
  expect_values(maximum(i64, zeros({3}, {.dtype = DType::i32})), {7, 0, 3}, 0, "maximum(int)");
  EXPECT_EQ(pow(i64, 2.0).dtype(), DType::i64);
  expect_values(pow(i64, 2.0), {49, 4, 9}, 0, "int^2");
  expect_values(pow(from_vector(std::vector<int64_t>{2, 3, -2}, {3}),
                    from_vector(std::vector<int64_t>{3, 2, 3}, {3})),
                {8, 9, -8}, 0, "int^int");
  EXPECT_EQ(pow(i64, 0.5).dtype(), DType::f32);

  // Scalars: whole numbers keep integer tensors integral, fractions promote to f32.
  EXPECT_EQ(add(i64, 2.0).dtype(), DType::i64);
  expect_values(add(i64, 2.0), {9, 0, 5}, 0, "int + 2");
  EXPECT_EQ(mul(i64, 0.5).dtype(), DType::f32);
  expect_values(mul(i64, 0.5), {3.5, -1, 1.5}, 0, "int * 0.5");
  EXPECT_EQ(clamp(i64, 0.0, 5.0).dtype(), DType::i64);
  expect_values(clamp(i64, 0.0, 5.0), {5, 0, 3}, 0, "clamp(int)");
  expect_values(clamp(i64, std::nullopt, 4.0), {4, -2, 3}, 0, "clamp(int, max)");
  EXPECT_EQ(add(f32.to(DType::b8), 1.0).dtype(), DType::i64);
  EXPECT_EQ(add(f32.to(DType::bf16), 1.0).dtype(), DType::bf16);
}

TEST(Elementwise, ComparisonsReturnBoolAndNoGrad) {
  const Tensor a = tensor({1, 2, 3}, {3, 1}, DType::f64).requires_grad_(true);
  const Tensor b = from_vector(std::vector<int64_t>{0, 1, 2, 3}, {1, 4});  // i64 vs f64
  struct Case {
    Tensor (*op)(const Tensor&, const Tensor&);
    std::function<bool(double, double)> ref;
    const char* name;
  };
  const Case cases[] = {
      {&eq, [](double x, double y) { return x == y; }, "eq"},
      {&ne, [](double x, double y) { return x != y; }, "ne"},
      {&lt, [](double x, double y) { return x < y; }, "lt"},
      {&le, [](double x, double y) { return x <= y; }, "le"},
      {&gt, [](double x, double y) { return x > y; }, "gt"},
      {&ge, [](double x, double y) { return x >= y; }, "ge"},
  };
  for (const Case& c : cases) {
    const Tensor y = c.op(a, b);
    EXPECT_EQ(y.dtype(), DType::b8) << c.name;
    EXPECT_EQ(y.shape(), (Shape{3, 4})) << c.name;
    EXPECT_FALSE(y.requires_grad()) << c.name;
    std::vector<double> want;
    for (double x : {1.0, 2.0, 3.0})
      for (double z : {0.0, 1.0, 2.0, 3.0}) want.push_back(c.ref(x, z) ? 1 : 0);
    expect_values(y, want, 0, c.name);
  }
}

TEST(Elementwise, WhereBroadcastsAndPromotes) {
  const Tensor cond = gt(tensor({1, -1, 2}, {3, 1}), tensor({0}, {1}));  // [3, 1] bool
  const Tensor a = from_vector(std::vector<int64_t>{10, 20, 30, 40}, {1, 4});
  const Tensor b = scalar_tensor(-0.5);
  const Tensor y = where(cond, a, b);
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
  expect_values(y, {10, 20, 30, 40, -.5, -.5, -.5, -.5, 10, 20, 30, 40}, 0, "where");
  EXPECT_THROW(where(a, a, b), Error);  // the condition must be bool
}

TEST(Elementwise, ErrorsNameTheOpAndShapes) {
  try {
    add(tensor({1, 2, 3}, {3}), tensor({1, 2, 3, 4}, {4}));
    FAIL() << "expected a broadcast error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("add"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4]"), std::string::npos) << msg;
  }
  EXPECT_THROW(clamp(tensor({1}, {1}), std::nullopt, std::nullopt), Error);
  EXPECT_THROW(neg(tensor({1}, {1}, DType::b8)), Error);
  EXPECT_THROW(add(tensor({1}, {1}, DType::i64), tensor({1}, {1}, DType::i64), 0.5), Error);
}

TEST(Elementwise, EmptyTensors) {
  const Tensor y = add(empty({0, 3}), tensor({1, 2, 3}, {3}));
  EXPECT_EQ(y.shape(), (Shape{0, 3}));
  EXPECT_EQ(exp(empty({0})).numel(), 0);
}

// ---- gradients

TEST(ElementwiseGrad, UnaryOps) {
  for (const UnaryCase& c : unary_cases()) {
    if (std::string(c.name) == "sign") continue;  // zero gradient: checked below
    // Inputs 0.05 away from the kinks of relu/abs (0) and from the clamp bounds.
    std::vector<double> v = uniform_values(12, c.lo, c.hi, 21, 0.05);
    for (double& x : v)
      for (double bound : {-0.5, 0.7, 0.3, -0.3})
        if (std::abs(x - bound) < 0.05) x += 0.1;
    const auto f = [&](const std::vector<Tensor>& in) { return c.op(in[0]); };
    EXPECT_GRADCHECK(f, {leaf(v, {3, 4})}) << c.name;
    // Through a transposed view.
    const auto ft = [&](const std::vector<Tensor>& in) { return c.op(in[0].t()); };
    EXPECT_GRADCHECK(ft, {leaf(v, {3, 4})}) << c.name << " transposed";
  }
}

TEST(ElementwiseGrad, SignHasZeroGradient) {
  const Tensor x = leaf({-1, 2}, {2});
  sign(x).backward(ones_like(x));
  expect_values(x.grad(), {0, 0}, 0, "sign grad");
}

TEST(ElementwiseGrad, BinaryOpsSameShape) {
  for (const BinaryCase& c : binary_cases()) {
    const Tensor a = leaf(uniform_values(6, c.lo, c.hi, 31), {2, 3});
    const Tensor b = leaf(uniform_values(6, c.lo, c.hi, 32), {2, 3});  // no ties
    const auto f = [&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); };
    EXPECT_GRADCHECK(f, {a, b}) << c.name;
    // Non-contiguous: a read through a transpose.
    const Tensor at = leaf(uniform_values(6, c.lo, c.hi, 33), {3, 2});
    const auto ft = [&](const std::vector<Tensor>& in) { return c.op(in[0].t(), in[1]); };
    EXPECT_GRADCHECK(ft, {at, b}) << c.name << " transposed";
  }
}

TEST(ElementwiseGrad, BinaryOpsBroadcast) {  // the gradients are summed back by sum_to
  for (const BinaryCase& c : binary_cases()) {
    const Tensor a = leaf(uniform_values(12, c.lo, c.hi, 41), {3, 1, 4});
    const Tensor b = leaf(uniform_values(2, c.lo, c.hi, 42), {2, 1});
    const auto f = [&](const std::vector<Tensor>& in) { return c.op(in[0], in[1]); };
    EXPECT_GRADCHECK(f, {a, b}) << c.name;
  }
}

TEST(ElementwiseGrad, Where) {
  const Tensor cond = gt(tensor({1, -1, 2}, {3, 1}), tensor({0}, {1}));
  const Tensor a = leaf(uniform_values(4, -1, 1, 51), {1, 4});
  const Tensor b = leaf(uniform_values(12, -1, 1, 52), {3, 4});
  const auto f = [&](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); };
  EXPECT_GRADCHECK(f, {a, b});
}

TEST(ElementwiseGrad, ClampPassesGradientAtTheBounds) {
  const Tensor x = leaf({-1, 0.5, 2, -1.5, 3}, {5});
  clamp(x, -1.0, 2.0).backward(ones_like(x));
  expect_values(x.grad(), {1, 1, 1, 0, 0}, 0, "clamp grad");
}

TEST(ElementwiseGrad, MaximumMinimumSplitTies) {
  for (bool is_max : {true, false}) {
    const Tensor a = leaf({1, 2, 5}, {3});
    const Tensor b = leaf({1, 3, 4}, {3});
    (is_max ? maximum(a, b) : minimum(a, b)).backward(ones_like(a));
    expect_values(a.grad(), is_max ? std::vector<double>{0.5, 0, 1} : std::vector<double>{0.5, 1, 0},
                  0, is_max ? "maximum a" : "minimum a");
    expect_values(b.grad(), is_max ? std::vector<double>{0.5, 1, 0} : std::vector<double>{0.5, 0, 1},
                  0, is_max ? "maximum b" : "minimum b");
  }
}

TEST(ElementwiseGrad, PowAtZero) {
  // d/da of a^0 is 0 (not 0 * a^-1); d/db of 0^b is 0 for b >= 0, like PyTorch.
  const Tensor a = leaf({0, 0}, {2});
  const Tensor b = leaf({0, 2}, {2});
  pow(a, b).backward(ones_like(a));
  expect_values(a.grad(), {0, 0}, 0, "pow da");
  expect_values(b.grad(), {0, 0}, 0, "pow db");
  const Tensor x = leaf({0, 1}, {2});
  pow(x, 0.0).backward(ones_like(x));
  expect_values(x.grad(), {0, 0}, 0, "x^0");
}

TEST(ElementwiseGrad, PromotedOperandGetsItsOwnDtype) {
  const Tensor a = tensor({1, 2}, {2}, DType::f32).requires_grad_(true);
  const Tensor b = leaf({3, 4}, {2});
  const Tensor y = mul(a, b);
  EXPECT_EQ(y.dtype(), DType::f64);
  y.backward(ones_like(y));
  EXPECT_EQ(a.grad().dtype(), DType::f32);
  expect_values(a.grad(), {3, 4}, 0, "da");
  expect_values(b.grad(), {1, 2}, 0, "db");
}

TEST(ElementwiseGrad, SavedOutputModifiedInPlaceIsReported) {
  const Tensor x = leaf({0.5, 1}, {2});
  Tensor y = exp(x);
  y.mul_(2.0);
  EXPECT_THROW(y.backward(ones_like(y)), Error);
}

TEST(ElementwiseGrad, NoGraphUnderNoGrad) {
  const Tensor x = leaf({0.5, 1}, {2});
  NoGradGuard guard;
  EXPECT_FALSE(exp(x).requires_grad());
  EXPECT_FALSE(add(x, x).requires_grad());
}

}  // namespace
}  // namespace kiln
