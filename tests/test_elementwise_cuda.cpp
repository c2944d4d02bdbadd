// CUDA elementwise kernels against the CPU ones, forward and backward, in f32 and bf16.
// The CPU result is the reference: both compute in f32 from the same inputs, so they differ
// by a few f32 ulps (f32: rtol 1e-5) or, after rounding to bf16, by at most about one bf16
// ulp (bf16: rtol 1e-2, the CPU side computed in bf16 too). Layouts cover each kernel path:
// dense and 16-byte aligned (vectorised, with a tail: 2^20 + 3 elements), dense but
// misaligned (a slice starting one element in), strided (transposed) and broadcast.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/elementwise.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_matches;
using testing::kCuda;
using testing::Tolerance;

constexpr int64_t kLarge = (int64_t{1} << 20) + 3;

Tolerance tolerance(DType dtype) {
  return dtype == DType::bf16 ? Tolerance{.rtol = 1e-2, .atol = 1e-3} : Tolerance{.rtol = 1e-5, .atol = 1e-6};
}

// Uniform values in [lo, hi), drawn in f64 on the CPU and rounded to `dtype`.
Tensor random_cpu(const Shape& shape, double lo, double hi, DType dtype, uint64_t seed) {
  return testing::random_cpu(shape, lo, hi, dtype, seed, DType::f64);
}

// The layouts each kernel path sees, built from one CPU tensor of shape `shape`.
struct Layout {
  const char* name;
  Shape shape;
  std::function<Tensor(const Tensor&)> view;  // applied to the base on either device
};
std::vector<Layout> layouts() {
  return {
      {"dense-vectorised", {kLarge}, [](const Tensor& t) { return t; }},
      {"dense-misaligned", {kLarge + 1}, [](const Tensor& t) { return t.narrow(0, 1, kLarge); }},
      {"dense-offset-8-elements", {kLarge + 8}, [](const Tensor& t) { return t.narrow(0, 8, kLarge); }},
      {"transposed", {300, 257}, [](const Tensor& t) { return t.t(); }},
  };
}

using UnaryFn = std::function<Tensor(const Tensor&)>;
struct UnaryCase {
  const char* name;
  UnaryFn op;
  double lo, hi;
};
std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, -3, 3},
      {"exp", [](const Tensor& x) { return exp(x); }, -3, 3},
      {"log", [](const Tensor& x) { return log(x); }, 0.1, 4},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, 0.1, 4},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, 0.1, 4},
      {"abs", [](const Tensor& x) { return abs(x); }, -3, 3},
      {"relu", [](const Tensor& x) { return relu(x); }, -3, 3},
      {"gelu", [](const Tensor& x) { return gelu(x); }, -5, 5},
      {"tanh", [](const Tensor& x) { return tanh(x); }, -4, 4},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, -6, 6},
      {"sign", [](const Tensor& x) { return sign(x); }, -3, 3},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 1.0); }, -3, 3},
      {"pow3", [](const Tensor& x) { return pow(x, 3.0); }, -2, 2},
      {"pow-0.5", [](const Tensor& x) { return pow(x, -0.5); }, 0.1, 4},
      {"square", [](const Tensor& x) { return square(x); }, -3, 3},
      {"affine", [](const Tensor& x) { return x * 1.5 + 0.25; }, -3, 3},
  };
}

TEST(ElementwiseCuda, UnaryForwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const UnaryCase& c : unary_cases())
    for (DType dtype : {DType::f32, DType::bf16})
      for (const Layout& l : layouts()) {
        const Tensor base = random_cpu(l.shape, c.lo, c.hi, dtype, 1);
        expect_matches(c.op(l.view(base.to(kCuda))), c.op(l.view(base)), tolerance(dtype),
                       std::string(c.name) + " " + std::string(dtype_name(dtype)) + " " + l.name);
      }
}

TEST(ElementwiseCuda, UnaryBackwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const UnaryCase& c : unary_cases())
    for (DType dtype : {DType::f32, DType::bf16})
      for (const Layout& l : layouts()) {
        const std::string what =
            std::string(c.name) + " " + std::string(dtype_name(dtype)) + " " + l.name;
        const Tensor x = random_cpu(l.shape, c.lo, c.hi, dtype, 2).requires_grad_(true);
        const Tensor xc = x.detach().to(kCuda).requires_grad_(true);
        const Tensor y = c.op(l.view(x));
        const Tensor w = random_cpu(y.shape(), -1, 1, dtype, 3);
        y.backward(w);
        c.op(l.view(xc)).backward(w.to(kCuda));
        ASSERT_TRUE(xc.grad().defined()) << what;
        expect_matches(xc.grad(), x.grad(), tolerance(dtype), what);
      }
}

using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;
struct BinaryCase {
  const char* name;
  BinaryFn op;
  double lo, hi;
  bool differentiable;
};
std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, -3, 3, true},
      {"sub_alpha", [](const Tensor& a, const Tensor& b) { return sub(a, b, 0.5); }, -3, 3, true},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, -3, 3, true},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, 0.5, 3, true},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }, 0.2, 2, true},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, -3, 3, true},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, -3, 3, true},
      {"where", [](const Tensor& a, const Tensor& b) { return where(gt(a, b), a, b); }, -3, 3,
       true},
      // eq against maximum(a, b): true wherever a >= b, so both outcomes occur.
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, maximum(a, b)); }, -3, 3,
       false},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); }, -3, 3, false},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); }, -3, 3, false},
  };
}

// Pairs of operand layouts: (shape of a's base, shape of b's base, how to view each).
struct BinaryLayout {
  const char* name;
  Shape a_shape, b_shape;
  std::function<Tensor(const Tensor&)> view_a, view_b;
};
std::vector<BinaryLayout> binary_layouts() {
  const auto same = [](const Tensor& t) { return t; };
  return {
      {"dense-vectorised", {kLarge}, {kLarge}, same, same},
      {"dense-misaligned", {kLarge + 1}, {kLarge}, [](const Tensor& t) { return t.narrow(0, 1, kLarge); },
       same},
      {"transposed", {257, 300}, {300, 257}, [](const Tensor& t) { return t.t(); }, same},
      {"broadcast-small", {3, 1, 4}, {2, 1}, same, same},
      {"broadcast-rows", {64, 1, 768}, {1, 33, 768}, same, same},
      {"bias", {512, 768}, {768}, same, same},
  };
}

TEST(ElementwiseCuda, BinaryForwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const BinaryCase& c : binary_cases())
    for (DType dtype : {DType::f32, DType::bf16})
      for (const BinaryLayout& l : binary_layouts()) {
        const Tensor a = random_cpu(l.a_shape, c.lo, c.hi, dtype, 4);
        const Tensor b = random_cpu(l.b_shape, c.lo, c.hi, dtype, 5);
        const Tensor want = c.op(l.view_a(a), l.view_b(b));
        const Tensor got = c.op(l.view_a(a.to(kCuda)), l.view_b(b.to(kCuda)));
        // Comparisons and where select exactly; arithmetic within rounding.
        const Tolerance tol = c.differentiable && std::string(c.name) != "where"
                                  ? tolerance(dtype)
                                  : Tolerance{};
        expect_matches(got, want, tol,
                       std::string(c.name) + " " + std::string(dtype_name(dtype)) + " " + l.name);
      }
}

TEST(ElementwiseCuda, BinaryBackwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const BinaryCase& c : binary_cases()) {
    if (!c.differentiable) continue;
    for (DType dtype : {DType::f32, DType::bf16})
      for (const BinaryLayout& l : binary_layouts()) {
        const std::string what =
            std::string(c.name) + " " + std::string(dtype_name(dtype)) + " " + l.name;
        const Tensor a = random_cpu(l.a_shape, c.lo, c.hi, dtype, 6).requires_grad_(true);
        const Tensor b = random_cpu(l.b_shape, c.lo, c.hi, dtype, 7).requires_grad_(true);
        const Tensor ac = a.detach().to(kCuda).requires_grad_(true);
        const Tensor bc = b.detach().to(kCuda).requires_grad_(true);
        const Tensor y = c.op(l.view_a(a), l.view_b(b));
        const Tensor w = random_cpu(y.shape(), -1, 1, dtype, 8);
        y.backward(w);
        c.op(l.view_a(ac), l.view_b(bc)).backward(w.to(kCuda));
        // Broadcast gradients are sums over up to 64 * 33 terms: allow for summation order.
        Tolerance tol = tolerance(dtype);
        if (l.name != std::string("dense-vectorised") && dtype == DType::f32) tol = {.rtol = 1e-4, .atol = 1e-4};
        if (l.name != std::string("dense-vectorised") && dtype == DType::bf16) tol = {.rtol = 2e-2, .atol = 5e-2};
        expect_matches(ac.grad(), a.grad(), tol, what + " (a)");
        expect_matches(bc.grad(), b.grad(), tol, what + " (b)");
      }
  }
}

TEST(ElementwiseCuda, IntegerOpsAreExact) {
  KILN_SKIP_WITHOUT_CUDA();
  NoGradGuard no_grad;
  Generator gen(9);
  const Tensor a = randint(-1000, 1000, {kLarge}, {.dtype = DType::i64}, &gen);
  const Tensor b = randint(-1000, 1000, {kLarge}, {.dtype = DType::i64}, &gen);
  const Tensor ac = a.to(kCuda), bc = b.to(kCuda);
  const Tolerance exact{};
  expect_matches(add(ac, bc), add(a, b), exact, "add i64");
  expect_matches(mul(ac, bc), mul(a, b), exact, "mul i64");
  expect_matches(maximum(ac, bc), maximum(a, b), exact, "maximum i64");
  expect_matches(abs(ac), abs(a), exact, "abs i64");
  expect_matches(clamp(ac, -10.0, std::nullopt), clamp(a, -10.0, std::nullopt), exact, "clamp i64");
  expect_matches(eq(ac, maximum(ac, bc)), eq(a, maximum(a, b)), exact, "eq i64");
  expect_matches(where(lt(ac, bc), ac, bc), where(lt(a, b), a, b), exact, "where i64");
  const Tensor a32 = a.to(DType::i32), b32 = b.to(DType::i32);
  expect_matches(sub(a32.to(kCuda), b32.to(kCuda)), sub(a32, b32), exact, "sub i32");
  expect_matches(div(a32.to(kCuda), b32.to(kCuda)), div(a32, b32), tolerance(DType::f32),
                 "div i32 -> f32");
}

TEST(ElementwiseCuda, CpuScalarJoinsCudaOperand) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = random_cpu({1000}, -1, 1, DType::f32, 10);
  const Tensor s = scalar_tensor(2.5);
  expect_matches(mul(x.to(kCuda), s), mul(x, s), tolerance(DType::f32), "cuda * cpu scalar");
  EXPECT_THROW(add(x.to(kCuda), x), Error);  // a CPU tensor that is not a scalar
}

}  // namespace
}  // namespace kiln
