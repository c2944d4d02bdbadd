// linear on the CPU: values against a naive loop written from the definition (x w^T + b, then
// GELU tanh), f64 gradchecks with and without bias and GELU, batched and 1-D inputs, views
// that BLAS reads in place or that must be copied, 16-bit dtypes and autocast, empty sizes,
// gradients in the weight's own layout, nn::Linear going through linear(), and errors that
// name the shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/linear.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::gradcheck;
using testing::rand_input;

Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  NoGradGuard no_grad;
  Generator gen(seed);
  return randn(shape, {.dtype = DType::f64}, &gen).to(dtype);
}

// PyTorch's GELU with approximate='tanh', from its definition.
double gelu_ref(double z) { return 0.5 * z * (1 + std::tanh(std::sqrt(2 / M_PI) * (z + 0.044715 * z * z * z))); }

// act(x w^T + b) by brute force in f64, from the values alone.
Tensor naive_linear(const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  const int64_t in = w.size(1), out = w.size(0);
  const int64_t rows = shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  const std::vector<double> vx = x.to_vector<double>(), vw = w.to_vector<double>();
  const std::vector<double> vb = b.defined() ? b.to_vector<double>() : std::vector<double>(out, 0.0);
  std::vector<double> y(rows * out);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double z = vb[o];
      for (int64_t k = 0; k < in; ++k) z += vx[r * in + k] * vw[o * in + k];
      y[r * out + o] = act == Activation::gelu ? gelu_ref(z) : z;
    }
  Shape shape = x.shape();
  shape.back() = out;
  return from_vector(y, shape, {.dtype = DType::f64});
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

const char* act_name(Activation act) { return act == Activation::gelu ? "gelu" : "none"; }

TEST(Linear, MatchesNaiveLoop) {
  uint64_t seed = 10;
  for (const Shape& x_shape : std::vector<Shape>{{7}, {5, 7}, {2, 3, 7}, {2, 1, 3, 7}}) {
    for (bool with_bias : {false, true}) {
      for (Activation act : {Activation::none, Activation::gelu}) {
        const Tensor x = random(x_shape, ++seed), w = random({6, 7}, ++seed);
        const Tensor b = with_bias ? random({6}, ++seed) : Tensor();
        const Tensor y = linear(x, w, b, act);
        const std::string what = shape_str(x_shape) + " bias " + std::to_string(with_bias) + " act " + act_name(act);
        Shape want_shape = x_shape;
        want_shape.back() = 6;
        ASSERT_EQ(y.shape(), want_shape) << what;
        EXPECT_EQ(y.dtype(), DType::f64) << what;
        EXPECT_LE(max_abs_diff(y, naive_linear(x, w, b, act)), 1e-12) << what;
      }
    }
  }
}

TEST(Linear, F32MatchesNaiveLoop) {
  const Tensor x = random({4, 9, 33}, 1, DType::f32), w = random({17, 33}, 2, DType::f32);
  const Tensor b = random({17}, 3, DType::f32);
  for (Activation act : {Activation::none, Activation::gelu}) {
    const Tensor y = linear(x, w, b, act);
    ASSERT_EQ(y.dtype(), DType::f32);
    EXPECT_LE(max_abs_diff(y, naive_linear(x, w, b, act)), 1e-5) << act_name(act);
  }
}

TEST(Linear, GradcheckF64) {
  for (bool with_bias : {false, true}) {
    for (Activation act : {Activation::none, Activation::gelu}) {
      const std::string what = std::string("bias ") + (with_bias ? "yes" : "no") + ", act " + act_name(act);
      std::vector<Tensor> inputs = {rand_input({2, 3, 4}, -1, 1, 1), rand_input({5, 4}, -1, 1, 2)};
      if (with_bias) inputs.push_back(rand_input({5}, -1, 1, 3));
      EXPECT_GRADCHECK(
          [act](const std::vector<Tensor>& in) {
            return linear(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), act);
          },
          inputs)
          << what;
    }
  }
}

TEST(Linear, GradcheckOneDimInput) {
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2], Activation::gelu); },
      {rand_input({4}, -1, 1, 4), rand_input({3, 4}, -1, 1, 5), rand_input({3}, -1, 1, 6)});
}

TEST(Linear, GradientsOnlyWhereWanted) {
  // Only the bias wants a gradient: dz's row sums, with no GEMM operand saved.
  const Tensor x = random({3, 4}, 7), w = random({2, 4}, 8);
  Tensor b = random({2}, 9).requires_grad_(true);
  Tensor g = random({3, 2}, 10);
  linear(x, w, b).backward(g);
  const std::vector<double> vg = g.to_vector<double>(), db = b.grad().to_vector<double>();
  for (int64_t o = 0; o < 2; ++o) EXPECT_NEAR(db[o], vg[o] + vg[2 + o] + vg[4 + o], 1e-12);
  EXPECT_GRADCHECK([&](const std::vector<Tensor>& in) { return linear(x, in[0], Tensor(), Activation::gelu); },
                   {rand_input({2, 4}, -1, 1, 11)});
}

TEST(Linear, NonContiguousInputsAndWeight) {
  // A transposed input (rows not unit-stride: copied), a sliced one (rows unit-stride with a
  // longer leading dimension: read in place), and a transposed weight.
  const Tensor base = random({6, 5}, 20);
  const Tensor wide = random({2, 3, 10}, 21);
  const Tensor w = random({4, 6}, 22), w_t = random({6, 4}, 23).t();
  const Tensor b = random({4}, 24);
  const Tensor x_t = base.t();                      // [5, 6], strides (1, 5)
  const Tensor x_slice = wide.narrow(2, 2, 6);       // [2, 3, 6], strides (30, 10, 1)
  const Tensor x_step = random({5, 12}, 25).slice(1, 0, 12, 2);  // [5, 6], stride 2 in the last dim
  for (Activation act : {Activation::none, Activation::gelu}) {
    for (const Tensor* x : {&x_t, &x_slice, &x_step}) {
      const std::string what = "x strides " + shape_str(x->strides()) + ", act " + act_name(act);
      EXPECT_LE(max_abs_diff(linear(*x, w, b, act), naive_linear(x->contiguous(), w, b, act)), 1e-12) << what;
      EXPECT_LE(max_abs_diff(linear(*x, w_t, b, act), naive_linear(x->contiguous(), w_t.contiguous(), b, act)),
                1e-12)
          << what << ", transposed weight";
    }
  }
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return linear(in[0].t(), in[1], in[2], Activation::gelu); },
      {rand_input({4, 3}, -1, 1, 26), rand_input({2, 4}, -1, 1, 27), rand_input({2}, -1, 1, 28)});
  EXPECT_GRADCHECK(
      [](const std::vector<Tensor>& in) { return linear(in[0].narrow(1, 1, 3), in[1].t(), in[2]); },
      {rand_input({2, 5}, -1, 1, 29), rand_input({3, 2}, -1, 1, 30), rand_input({2}, -1, 1, 31)});
}

TEST(Linear, WeightGradientInWeightLayout) {
  // dW = dz^T x is produced directly as [out, in]: contiguous, no transposed copy.
  Tensor x = random({4, 8, 6}, 40).requires_grad_(true);
  Tensor w = random({5, 6}, 41).requires_grad_(true);
  Tensor b = random({5}, 42).requires_grad_(true);
  sum(linear(x, w, b, Activation::gelu)).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().shape(), (Shape{5, 6}));
  EXPECT_TRUE(w.grad().is_contiguous());
  EXPECT_EQ(x.grad().shape(), x.shape());
  EXPECT_EQ(b.grad().shape(), (Shape{5}));
}

TEST(Linear, MatchesComposedOps) {
  // The fused op and matmul + add + gelu give the same gradients (f64, where the orders of
  // summation hardly matter).
  const Tensor x0 = random({3, 4, 8}, 50), w0 = random({6, 8}, 51), b0 = random({6}, 52);
  const Tensor g = random({3, 4, 6}, 53);
  Tensor x1 = x0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true),
         b1 = b0.clone().requires_grad_(true);
  Tensor x2 = x0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true),
         b2 = b0.clone().requires_grad_(true);
  const Tensor y1 = linear(x1, w1, b1, Activation::gelu);
  const Tensor y2 = gelu(add(matmul(x2, w2.t()), b2));
  EXPECT_LE(max_abs_diff(y1, y2), 1e-12);
  y1.backward(g);
  y2.backward(g);
  EXPECT_LE(max_abs_diff(x1.grad(), x2.grad()), 1e-12);
  EXPECT_LE(max_abs_diff(w1.grad(), w2.grad()), 1e-12);
  EXPECT_LE(max_abs_diff(b1.grad(), b2.grad()), 1e-12);
}

TEST(Linear, SixteenBitRoundsOnce) {
  // bf16 and f16 multiply and add the bias in f32 and round once at the end: within half a
  // 16-bit ulp (plus f32 noise) of the f64 result computed from the same rounded inputs.
  for (DType dtype : {DType::bf16, DType::f16}) {
    const Tensor x = random({2, 5, 24}, 60, dtype), w = random({10, 24}, 61, dtype), b = random({10}, 62, dtype);
    for (Activation act : {Activation::none, Activation::gelu}) {
      const Tensor y = linear(x, w, b, act);
      ASSERT_EQ(y.dtype(), dtype);
      const std::vector<double> got = y.to_vector<double>();
      const std::vector<double> want = naive_linear(x, w, b, act).to_vector<double>();
      const double half_ulp = dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 2048;
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_LE(std::abs(got[i] - want[i]), half_ulp * std::abs(want[i]) + 1e-5)
            << dtype_name(dtype) << " " << act_name(act) << " element " << i;
    }
  }
}

TEST(Linear, AutocastComputesInBf16WithF32Gradients) {
  Tensor x = random({3, 4, 16}, 70, DType::f32).requires_grad_(true);
  Tensor w = random({8, 16}, 71, DType::f32).requires_grad_(true);
  Tensor b = random({8}, 72, DType::f32).requires_grad_(true);
  Tensor y;
  {
    AutocastGuard autocast(DType::bf16);
    y = linear(x, w, b, Activation::gelu);
  }
  ASSERT_EQ(y.dtype(), DType::bf16);
  // The reference: the same op on the bf16-rounded inputs, without autocast.
  const Tensor ref = linear(x.detach().to(DType::bf16), w.detach().to(DType::bf16), b.detach().to(DType::bf16),
                            Activation::gelu);
  EXPECT_EQ(max_abs_diff(y, ref), 0.0);
  sum(y.to(DType::f32)).backward();
  ASSERT_TRUE(x.grad().defined() && w.grad().defined() && b.grad().defined());
  EXPECT_EQ(x.grad().dtype(), DType::f32);
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  EXPECT_EQ(b.grad().dtype(), DType::f32);
  // Against f32 gradients of the f32 op: bf16 products are good to ~1e-2 relative.
  Tensor x32 = x.detach().clone().requires_grad_(true), w32 = w.detach().clone().requires_grad_(true),
         b32 = b.detach().clone().requires_grad_(true);
  sum(linear(x32, w32, b32, Activation::gelu)).backward();
  auto rel = [](const Tensor& a, const Tensor& ref32) {
    double m = 0;
    for (double v : ref32.to_vector<double>()) m = std::max(m, std::abs(v));
    return max_abs_diff(a, ref32) / m;
  };
  EXPECT_LE(rel(x.grad(), x32.grad()), 2e-2);
  EXPECT_LE(rel(w.grad(), w32.grad()), 2e-2);
  EXPECT_LE(rel(b.grad(), b32.grad()), 2e-2);
  // f64 stays f64 under autocast (the gradchecks rely on it).
  AutocastGuard autocast(DType::bf16);
  EXPECT_EQ(linear(random({2, 3}, 73), random({4, 3}, 74)).dtype(), DType::f64);
}

TEST(Linear, EmptySizes) {
  // No rows: an empty output, zero weight and bias gradients.
  Tensor x = random({0, 3}, 80).requires_grad_(true);
  Tensor w = random({2, 3}, 81).requires_grad_(true), b = random({2}, 82).requires_grad_(true);
  Tensor y = linear(x, w, b, Activation::gelu);
  EXPECT_EQ(y.shape(), (Shape{0, 2}));
  sum(y).backward();
  EXPECT_EQ(w.grad().shape(), (Shape{2, 3}));
  EXPECT_EQ(max_abs(w.grad()), 0.0);
  EXPECT_EQ(max_abs(b.grad()), 0.0);
  // No input features: the output is act(bias) on every row.
  const Tensor x0 = random({4, 0}, 83), w0 = random({3, 0}, 84), b0 = random({3}, 85);
  EXPECT_LE(max_abs_diff(linear(x0, w0, b0, Activation::gelu), naive_linear(x0, w0, b0, Activation::gelu)), 1e-15);
}

TEST(Linear, ModuleUsesLinear) {
  nn::Linear layer(6, 4);
  const Tensor x = random({2, 3, 6}, 90, DType::f32);
  const Tensor y = layer.forward(x);
  EXPECT_LE(max_abs_diff(y, naive_linear(x, layer.weight, layer.bias, Activation::none)), 1e-5);
  EXPECT_NE(y.grad_fn(), nullptr);
  EXPECT_EQ(y.grad_fn()->name(), "LinearBackward");
}

TEST(Linear, ErrorsNameShapes) {
  const Tensor x = random({2, 5}, 100), w = random({3, 4}, 101), b = random({4}, 102);
  expect_error([&] { linear(x, w); }, {"linear", "f64[2, 5]", "f64[3, 4]", "in_features 4"});
  expect_error([&] { linear(random({2, 4}, 103), w, b); }, {"linear", "bias", "f64[4]", "[3]"});
  expect_error([&] { linear(x, random({5}, 104)); }, {"linear", "weight", "f64[5]"});
  expect_error([&] { linear(random({2, 4}, 105, DType::f32), w); }, {"linear", "f32[2, 4]", "f64[3, 4]", "dtype"});
  expect_error([&] { linear(scalar_tensor(1.0, {.dtype = DType::f64}), w); }, {"linear", "f64[]"});
  expect_error([&] { linear(from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4}), w.to(DType::i64)); },
               {"linear", "floating", "i64[1, 4]"});
}

}  // namespace
}  // namespace kiln
