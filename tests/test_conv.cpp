// conv2d on the CPU: forward against a naive 7-loop reference (strides, padding, dilation,
// groups including depthwise, batches, non-square shapes, a batch large enough to take
// several column chunks), backward against naive reference loops and against finite
// differences in f64, f16/bf16 (computed in f32, rounded once) against the reference on the
// same rounded inputs, argument errors, the nn::Conv2d module, and
// parity with Debian's PyTorch 1.13 for conv2d followed by max_pool2d, forward and backward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/conv.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::rand_input;
using testing::uniform_values;

struct ConvCase {
  const char* name;
  int64_t N, C, H, W, O, kH, kW;
  Size2 stride, padding, dilation;
  int64_t groups;
  bool bias;
};

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

// y[n][o][oh][ow] = b[o] + sum over (c, i, j) of x[n][g*Cg + c][oh*s - p + i*d][ow*s - p + j*d]
// * w[o][c][i][j], with g = o / Og and out-of-range input positions reading 0.
std::vector<double> ref_conv2d(const ConvCase& c, const std::vector<double>& x,
                               const std::vector<double>& w, const std::vector<double>& b) {
  const int64_t OH = out_size(c.H, c.kH, c.stride.h, c.padding.h, c.dilation.h);
  const int64_t OW = out_size(c.W, c.kW, c.stride.w, c.padding.w, c.dilation.w);
  const int64_t Cg = c.C / c.groups, Og = c.O / c.groups;
  std::vector<double> y(c.N * c.O * OH * OW);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = c.bias ? b[o] : 0.0;
          const int64_t grp = o / Og;
          for (int64_t ci = 0; ci < Cg; ++ci)
            for (int64_t i = 0; i < c.kH; ++i)
              for (int64_t j = 0; j < c.kW; ++j) {
                const int64_t ih = oh * c.stride.h - c.padding.h + i * c.dilation.h;
                const int64_t iw = ow * c.stride.w - c.padding.w + j * c.dilation.w;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                acc += x[((n * c.C + grp * Cg + ci) * c.H + ih) * c.W + iw] *
                       w[((o * Cg + ci) * c.kH + i) * c.kW + j];
              }
          y[((n * c.O + o) * OH + oh) * OW + ow] = acc;
        }
  return y;
}

// The same loops with the products sent backwards: dx and dw for output gradient gy.
void ref_conv2d_backward(const ConvCase& c, const std::vector<double>& x, const std::vector<double>& w,
                         const std::vector<double>& gy, std::vector<double>& dx, std::vector<double>& dw) {
  const int64_t OH = out_size(c.H, c.kH, c.stride.h, c.padding.h, c.dilation.h);
  const int64_t OW = out_size(c.W, c.kW, c.stride.w, c.padding.w, c.dilation.w);
  const int64_t Cg = c.C / c.groups, Og = c.O / c.groups;
  dx.assign(x.size(), 0.0);
  dw.assign(w.size(), 0.0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const double g = gy[((n * c.O + o) * OH + oh) * OW + ow];
          const int64_t grp = o / Og;
          for (int64_t ci = 0; ci < Cg; ++ci)
            for (int64_t i = 0; i < c.kH; ++i)
              for (int64_t j = 0; j < c.kW; ++j) {
                const int64_t ih = oh * c.stride.h - c.padding.h + i * c.dilation.h;
                const int64_t iw = ow * c.stride.w - c.padding.w + j * c.dilation.w;
                if (ih < 0 || ih >= c.H || iw < 0 || iw >= c.W) continue;
                const int64_t xi = ((n * c.C + grp * Cg + ci) * c.H + ih) * c.W + iw;
                const int64_t wi = ((o * Cg + ci) * c.kH + i) * c.kW + j;
                dx[xi] += g * w[wi];
                dw[wi] += g * x[xi];
              }
        }
}

// |got - want| <= tol * max|want| for every element (one scale per tensor: sums of mixed-sign
// products can land near zero, where a relative test means nothing).
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-300;
  for (double v : want) scale = std::max(scale, std::abs(v));
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= tol * scale) && bad++ == 0) first = static_cast<int64_t>(i);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " differ by more than " << tol
                    << " * " << scale << "; first at " << first << ": got "
                    << (first >= 0 ? got[first] : 0.0) << ", want " << (first >= 0 ? want[first] : 0.0);
}

std::vector<ConvCase> forward_cases() {
  return {
      {"3x3", 2, 3, 7, 6, 4, 3, 3, 1, 0, 1, 1, true},
      {"stride 2, padding 1", 2, 3, 8, 7, 5, 3, 3, 2, 1, 1, 1, true},
      {"non-square everything", 3, 2, 9, 6, 3, 2, 3, {2, 1}, {1, 0}, {1, 2}, 1, true},
      {"dilation 2, padding 2", 1, 2, 7, 7, 2, 3, 3, 1, 2, 2, 1, true},
      {"groups 2", 2, 4, 6, 5, 6, 3, 2, 1, 1, 1, 2, true},
      {"depthwise", 2, 3, 6, 6, 3, 3, 3, 1, 1, 1, 3, true},
      {"depthwise, multiplier 2, stride 2", 2, 2, 7, 8, 4, 3, 3, 2, 1, 1, 2, false},
      {"groups 3, stride (1, 2), dilation (2, 1)", 2, 6, 8, 9, 3, 2, 3, {1, 2}, {1, 1}, {2, 1}, 3, true},
      {"1x1", 4, 5, 3, 4, 2, 1, 1, 1, 0, 1, 1, true},
      {"kernel equals padded input", 2, 2, 3, 2, 3, 5, 4, 1, 1, 1, 1, true},
      {"no bias", 2, 3, 5, 5, 2, 3, 3, 1, 1, 1, 1, false},
      {"stride larger than kernel", 2, 2, 9, 9, 2, 2, 2, 3, 0, 1, 1, true},
  };
}

// Inputs of a case as kiln tensors of `dtype` (and the f64 values they hold).
struct ConvInputs {
  std::vector<double> x, w, b;
  Tensor tx, tw, tb;
};

ConvInputs make_inputs(const ConvCase& c, DType dtype, uint32_t seed) {
  ConvInputs in;
  const Shape xs = {c.N, c.C, c.H, c.W}, ws = {c.O, c.C / c.groups, c.kH, c.kW};
  in.tx = from_vector(uniform_values(shape_numel(xs), -1, 1, seed), xs, {.dtype = dtype});
  in.tw = from_vector(uniform_values(shape_numel(ws), -1, 1, seed + 1), ws, {.dtype = dtype});
  // The reference reads the values the tensors actually hold (rounded to dtype).
  in.x = in.tx.to_vector<double>();
  in.w = in.tw.to_vector<double>();
  if (c.bias) {
    in.tb = from_vector(uniform_values(c.O, -1, 1, seed + 2), {c.O}, {.dtype = dtype});
    in.b = in.tb.to_vector<double>();
  }
  return in;
}

TEST(Conv2d, ForwardMatchesNaiveLoops) {
  uint32_t seed = 10;
  for (const ConvCase& c : forward_cases()) {
    for (DType dtype : {DType::f64, DType::f32}) {
      const ConvInputs in = make_inputs(c, dtype, seed += 3);
      const Tensor y = conv2d(in.tx, in.tw, in.tb, c.stride, c.padding, c.dilation, c.groups);
      const Shape want_shape = {c.N, c.O, out_size(c.H, c.kH, c.stride.h, c.padding.h, c.dilation.h),
                                out_size(c.W, c.kW, c.stride.w, c.padding.w, c.dilation.w)};
      EXPECT_EQ(y.shape(), want_shape) << c.name;
      EXPECT_EQ(y.dtype(), dtype) << c.name;
      // f64 sums at most a few hundred products of magnitude <= 1: ~1e-14. f32: ~1e-6.
      expect_close(y.to_vector<double>(), ref_conv2d(c, in.x, in.w, in.b), dtype == DType::f64 ? 1e-12 : 1e-5,
                   std::string(c.name) + " " + std::string(dtype_name(dtype)));
    }
  }
}

TEST(Conv2d, UnbatchedAndNonContiguousInputs) {
  const ConvCase c = {"unbatched", 1, 3, 6, 5, 4, 3, 3, 2, 1, 1, 1, true};
  const ConvInputs in = make_inputs(c, DType::f64, 3);
  const std::vector<double> want = ref_conv2d(c, in.x, in.w, in.b);
  const Tensor y = conv2d(in.tx.squeeze(0), in.tw, in.tb, c.stride, c.padding);
  EXPECT_EQ(y.shape(), Shape({4, 3, 3}));
  expect_close(y.to_vector<double>(), want, 1e-12, "unbatched [C, H, W]");
  // The same input held transposed in memory.
  const Tensor xt = in.tx.transpose(2, 3).contiguous().transpose(2, 3);
  ASSERT_FALSE(xt.is_contiguous());
  expect_close(conv2d(xt, in.tw, in.tb, c.stride, c.padding).to_vector<double>(), want, 1e-12,
               "non-contiguous input");
}

// Large enough that the CPU kernel splits the batch into several column chunks
// (K * OH * OW = 288 * 32400 elements exceeds its 2^23 budget), forward and backward.
TEST(Conv2d, SeveralColumnChunksMatchNaiveLoops) {
  const ConvCase c = {"chunked", 3, 32, 180, 180, 2, 3, 3, 1, 1, 1, 1, true};
  const ConvInputs in = make_inputs(c, DType::f64, 77);
  Tensor x = in.tx.detach().requires_grad_(true), w = in.tw.detach().requires_grad_(true);
  Tensor b = in.tb.detach().requires_grad_(true);
  const Tensor y = conv2d(x, w, b, c.stride, c.padding);
  expect_close(y.to_vector<double>(), ref_conv2d(c, in.x, in.w, in.b), 1e-12, "chunked forward");
  const std::vector<double> gy = uniform_values(y.numel(), -1, 1, 78);
  y.backward(from_vector(gy, y.shape(), {.dtype = DType::f64}));
  std::vector<double> dx, dw;
  ref_conv2d_backward(c, in.x, in.w, gy, dx, dw);
  expect_close(x.grad().to_vector<double>(), dx, 1e-12, "chunked dx");
  expect_close(w.grad().to_vector<double>(), dw, 1e-12, "chunked dw");
  // db = sum of gy over (n, oh, ow).
  std::vector<double> db(c.O, 0.0);
  const int64_t plane = y.size(2) * y.size(3);
  for (int64_t k = 0; k < y.numel(); ++k) db[(k / plane) % c.O] += gy[k];
  expect_close(b.grad().to_vector<double>(), db, 1e-12, "chunked db");
}

TEST(Conv2dGrad, MatchesNaiveBackwardLoops) {
  uint32_t seed = 200;
  for (const ConvCase& c : forward_cases()) {
    const ConvInputs in = make_inputs(c, DType::f64, seed += 3);
    Tensor x = in.tx.detach().requires_grad_(true), w = in.tw.detach().requires_grad_(true);
    const Tensor y = conv2d(x, w, in.tb, c.stride, c.padding, c.dilation, c.groups);
    const std::vector<double> gy = uniform_values(y.numel(), -1, 1, seed);
    y.backward(from_vector(gy, y.shape(), {.dtype = DType::f64}));
    std::vector<double> dx, dw;
    ref_conv2d_backward(c, in.x, in.w, gy, dx, dw);
    expect_close(x.grad().to_vector<double>(), dx, 1e-12, std::string(c.name) + " dx");
    expect_close(w.grad().to_vector<double>(), dw, 1e-12, std::string(c.name) + " dw");
  }
}

TEST(Conv2dGrad, Gradcheck) {
  // Plain 3x3 with bias.
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0], in[1], in[2]); },
                   {rand_input({2, 2, 5, 4}, -1, 1, 1), rand_input({3, 2, 3, 3}, -1, 1, 2),
                    rand_input({3}, -1, 1, 3)});
  // Stride 2 + padding + dilation + groups 2, all at once.
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0], in[1], in[2], 2, 1, 2, 2); },
                   {rand_input({2, 4, 7, 6}, -1, 1, 4), rand_input({4, 2, 2, 3}, -1, 1, 5),
                    rand_input({4}, -1, 1, 6)});
  // Non-square stride, padding and dilation.
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0], in[1], in[2], {1, 2}, {0, 1}, {2, 1}); },
                   {rand_input({1, 2, 6, 5}, -1, 1, 7), rand_input({2, 2, 2, 3}, -1, 1, 8),
                    rand_input({2}, -1, 1, 9)});
  // Depthwise, no bias.
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0], in[1], Tensor(), 1, 1, 1, 3); },
                   {rand_input({2, 3, 4, 4}, -1, 1, 10), rand_input({3, 1, 3, 3}, -1, 1, 11)});
  // Unbatched input, and a transposed (non-contiguous) input view.
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0], in[1], in[2], 1, 1); },
                   {rand_input({2, 4, 3}, -1, 1, 12), rand_input({2, 2, 2, 2}, -1, 1, 13),
                    rand_input({2}, -1, 1, 14)});
  EXPECT_GRADCHECK([](auto& in) { return conv2d(in[0].transpose(2, 3), in[1], in[2]); },
                   {rand_input({1, 2, 5, 4}, -1, 1, 15), rand_input({2, 2, 2, 2}, -1, 1, 16),
                    rand_input({2}, -1, 1, 17)});
}

TEST(Conv2dGrad, OnlyRequestedGradients) {
  const Tensor x = rand_input({1, 2, 4, 4}, -1, 1, 20);
  Tensor w = rand_input({2, 2, 3, 3}, -1, 1, 21).detach();  // no grad
  Tensor b = rand_input({2}, -1, 1, 22);
  sum(conv2d(x, w, b, 1, 1)).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(w.grad().defined());
  // d(sum y)/db[o] = N * OH * OW = 16.
  EXPECT_EQ(b.grad().to_vector<double>(), std::vector<double>({16, 16}));
}

TEST(Conv2d, SixteenBitFloats) {
  const ConvCase c = {"bf16", 2, 4, 6, 6, 6, 3, 3, 1, 1, 1, 2, true};
  for (DType dtype : {DType::bf16, DType::f16}) {
    const ConvInputs in = make_inputs(c, dtype, 40);
    Tensor x = in.tx.detach().requires_grad_(true), w = in.tw.detach().requires_grad_(true);
    Tensor b = in.tb.detach().requires_grad_(true);
    const Tensor y = conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups);
    EXPECT_EQ(y.dtype(), dtype);
    // The same (already rounded) values in f64: the 16-bit result is that, rounded once.
    expect_close(y.to_vector<double>(), ref_conv2d(c, in.x, in.w, in.b), 1e-2, dtype_name(dtype).data());
    const std::vector<double> gy = uniform_values(y.numel(), -1, 1, 41);
    y.backward(from_vector(gy, y.shape(), {.dtype = dtype}));
    std::vector<double> dx, dw;
    ref_conv2d_backward(c, in.x, in.w, from_vector(gy, y.shape(), {.dtype = dtype}).to_vector<double>(), dx,
                        dw);
    EXPECT_EQ(x.grad().dtype(), dtype);
    expect_close(x.grad().to_vector<double>(), dx, 1e-2, "16-bit dx");
    expect_close(w.grad().to_vector<double>(), dw, 1e-2, "16-bit dw");
  }
}

TEST(Conv2d, BackwardIsDeterministic) {
  const Tensor x0 = rand_input({8, 3, 20, 20}, -1, 1, 50).detach();
  const Tensor w0 = rand_input({8, 3, 3, 3}, -1, 1, 51).detach();
  std::vector<std::vector<double>> grads;
  for (int run = 0; run < 2; ++run) {
    Tensor x = x0.to(DType::f32).requires_grad_(true), w = w0.to(DType::f32).requires_grad_(true);
    sum(mul(conv2d(x, w, Tensor(), 2, 1), conv2d(x, w, Tensor(), 2, 1))).backward();
    grads.push_back(x.grad().to_vector<double>());
    grads.push_back(w.grad().to_vector<double>());
  }
  EXPECT_EQ(grads[0], grads[2]);
  EXPECT_EQ(grads[1], grads[3]);
}

TEST(Conv2d, ErrorsNameTheShapes) {
  const Tensor x = zeros({2, 4, 5, 5}), w = zeros({6, 2, 3, 3});
  expect_error([&] { conv2d(x, zeros({6, 3, 3, 3})); }, "channel mismatch: input f32[2, 4, 5, 5]");
  expect_error([&] { conv2d(x, w); }, "expects 2");  // groups 1: the weight wants 2 channels
  expect_error([&] { conv2d(x, zeros({6, 1, 3, 3}), Tensor(), 1, 0, 1, 3); }, "groups=3 does not divide");
  expect_error([&] { conv2d(x, zeros({5, 2, 3, 3}), Tensor(), 1, 0, 1, 2); }, "groups=2 does not divide");
  expect_error([&] { conv2d(x, zeros({6, 4, 6, 3})); }, "larger than the padded input (5, 5)");
  expect_error([&] { conv2d(x, zeros({6, 4, 3, 3}), Tensor(), 1, 0, 3); }, "larger than the padded input");
  expect_error([&] { conv2d(x, w, zeros({5}), 1, 0, 1, 2); }, "bias f32[5]");
  expect_error([&] { conv2d(x, zeros({6, 2, 3, 3}, {.dtype = DType::f64}), Tensor(), 1, 0, 1, 2); },
               "does not match input");
  expect_error([&] { conv2d(x, w, Tensor(), 0, 0, 1, 2); }, "stride must be positive");
  expect_error([&] { conv2d(x, w, Tensor(), 1, -1, 1, 2); }, "padding must be non-negative");
  expect_error([&] { conv2d(zeros({4, 5}), w); }, "expected input [N, C, H, W]");
  expect_error([&] { conv2d(x, zeros({6, 2, 3})); }, "expected weight [O, C/groups, kH, kW]");
  expect_error([&] { conv2d(zeros({2, 4, 5, 5}, {.dtype = DType::i64}), w); }, "floating type");
  // Padding makes a kernel larger than the input legal.
  EXPECT_EQ(conv2d(x, zeros({6, 4, 6, 3}), Tensor(), 1, 1).shape(), Shape({2, 6, 2, 5}));
}

// ---------------------------------------------------------------- nn::Conv2d
TEST(Conv2dModule, ParametersInitForwardAndRepr) {
  Generator gen(7);
  nn::Conv2d conv(4, 8, 3, 1, 1, 1, 2, true, &gen);
  EXPECT_EQ(conv.weight.shape(), Shape({8, 2, 3, 3}));
  EXPECT_EQ(conv.bias.shape(), Shape({8}));
  EXPECT_EQ(conv.num_parameters(), 8 * 2 * 9 + 8);
  EXPECT_TRUE(conv.weight.requires_grad());
  const auto named = conv.named_parameters();
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[0].first, "weight");
  EXPECT_EQ(named[1].first, "bias");
  // PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 2 * 3 * 3 = 18, for both.
  // A uniform on [-a, a] has standard deviation a/sqrt(3); 144 draws give it to ~10%.
  const double bound = 1.0 / std::sqrt(18.0);
  const std::vector<double> w = conv.weight.to_vector<double>();
  double sq = 0;
  for (double v : w) {
    EXPECT_LE(std::abs(v), bound);
    sq += v * v;
  }
  EXPECT_NEAR(std::sqrt(sq / w.size()), bound / std::sqrt(3.0), 0.2 * bound / std::sqrt(3.0));
  for (double v : conv.bias.to_vector<double>()) EXPECT_LE(std::abs(v), bound);
  // The same seed gives the same module.
  Generator gen2(7);
  nn::Conv2d again(4, 8, 3, 1, 1, 1, 2, true, &gen2);
  EXPECT_EQ(again.weight.to_vector<double>(), w);

  const Tensor x = rand_input({2, 4, 5, 5}, -1, 1, 3).detach().to(DType::f32);
  const Tensor y = conv(x);
  EXPECT_EQ(y.shape(), Shape({2, 8, 5, 5}));
  EXPECT_EQ(y.to_vector<double>(), conv2d(x, conv.weight, conv.bias, 1, 1, 1, 2).to_vector<double>());
  sum(y).backward();
  EXPECT_TRUE(conv.weight.grad().defined());
  EXPECT_TRUE(conv.bias.grad().defined());

  EXPECT_EQ(conv.repr(), "Conv2d(4, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=2)");
  nn::Conv2d plain(1, 32, 5);
  EXPECT_EQ(plain.repr(), "Conv2d(1, 32, kernel_size=(5, 5), stride=(1, 1))");
  nn::Conv2d fancy(3, 6, {3, 5}, {2, 1}, {1, 2}, 2, 3, false);
  EXPECT_EQ(fancy.repr(), "Conv2d(3, 6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), "
                          "dilation=(2, 2), groups=3, bias=false)");
  EXPECT_FALSE(fancy.bias.defined());
  EXPECT_EQ(fancy.parameters().size(), 1u);
  expect_error([&] { conv(rand_input({2, 3, 5, 5}).detach().to(DType::f32)); }, "does not have 4 channels");
  expect_error([] { nn::Conv2d(4, 6, 3, 1, 0, 1, 4); }, "groups=4 must divide");
}

// ---------------------------------------------------------------- parity with PyTorch
// Inputs and results travel as text: a line of dims, then a line of values printed with 17
// significant digits (exact for f64 both ways).
void write_tensor(const std::filesystem::path& path, const Tensor& t) {
  std::ofstream out(path);
  for (int64_t s : t.shape()) out << s << ' ';
  out << '\n';
  char buf[32];
  for (double v : t.to_vector<double>()) {
    std::snprintf(buf, sizeof buf, "%.17g ", v);
    out << buf;
  }
  out << '\n';
  KILN_CHECK(out, "cannot write ", path.string());
}

std::vector<double> read_values(const std::filesystem::path& path) {
  std::ifstream in(path);
  KILN_CHECK(in, "cannot open ", path.string(), " (did the reference script write it?)");
  std::string dims;
  std::getline(in, dims);
  std::vector<double> v;
  for (std::string s; in >> s;) v.push_back(std::strtod(s.c_str(), nullptr));
  return v;
}

// Keep in step with kiln_forward below.
const char* const kParityScript = R"PY(
import os, sys
import torch
import torch.nn.functional as F

d = sys.argv[1]
def load(name, dtype):
    with open(os.path.join(d, name + '.txt')) as f:
        shape = [int(s) for s in f.readline().split()]
        vals = [float(s) for s in f.readline().split()]
    return torch.tensor(vals, dtype=torch.float64).reshape(shape).to(dtype)
def save(name, t):
    with open(os.path.join(d, name + '.txt'), 'w') as f:
        f.write(' '.join(str(s) for s in t.shape) + '\n')
        f.write(' '.join(repr(float(v)) for v in t.detach().double().reshape(-1).tolist()) + '\n')
for dtype, suffix in ((torch.float64, 'f64'), (torch.float32, 'f32')):
    x = load('x', dtype).requires_grad_()
    w = load('w', dtype).requires_grad_()
    b = load('b', dtype).requires_grad_()
    r = load('r', dtype)
    h = F.conv2d(x, w, b, stride=(1, 2), padding=1, dilation=(2, 1), groups=2)
    y = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    (y * r).sum().backward()
    save('y_' + suffix, y)
    save('dx_' + suffix, x.grad)
    save('dw_' + suffix, w.grad)
    save('db_' + suffix, b.grad)
)PY";

Tensor kiln_forward(const Tensor& x, const Tensor& w, const Tensor& b) {
  return max_pool2d(conv2d(x, w, b, {1, 2}, 1, {2, 1}, 2), 3, 2, 1);
}

TEST(Conv2dParity, ConvThenMaxPoolMatchesPyTorch) {
  namespace fs = std::filesystem;
  const std::string skip = testing::python_unavailable(testing::kSystemPython, "torch");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const fs::path dir = testing::make_temp_dir("kiln_conv_parity_");
  ASSERT_FALSE(dir.empty());
  {
    std::ofstream(dir / "ref.py") << kParityScript;
  }

  Generator gen(2024);
  const TensorOptions f64{.dtype = DType::f64};
  const Tensor x = randn({2, 4, 9, 10}, f64, &gen), w = randn({6, 2, 3, 3}, f64, &gen) * 0.3;
  const Tensor b = randn({6}, f64, &gen) * 0.1;
  const Shape y_shape = kiln_forward(x, w, b).shape();
  const Tensor r = randn(y_shape, f64, &gen);
  write_tensor(dir / "x.txt", x);
  write_tensor(dir / "w.txt", w);
  write_tensor(dir / "b.txt", b);
  write_tensor(dir / "r.txt", r);
  const testing::CommandResult ref = testing::run_command(
      testing::kSystemPython + " '" + (dir / "ref.py").string() + "' '" + dir.string() + "' 2>&1");
  ASSERT_TRUE(ref.ok) << ref.failure;

  // f64 agrees to rounding; f32 to a few f32 roundings of sums of ~20 products.
  for (const auto& [dtype, suffix, tol] : {std::tuple{DType::f64, "f64", 1e-12}, std::tuple{DType::f32, "f32", 1e-5}}) {
    // detach(): for f64, to() returns the tensor itself, which must stay without grad.
    Tensor xv = x.to(dtype).detach().requires_grad_(true), wv = w.to(dtype).detach().requires_grad_(true);
    Tensor bv = b.to(dtype).detach().requires_grad_(true);
    const Tensor y = kiln_forward(xv, wv, bv);
    sum(mul(y, r.to(dtype))).backward();
    const std::string s = suffix;
    expect_close(y.to_vector<double>(), read_values(dir / ("y_" + s + ".txt")), tol, "y " + s);
    expect_close(xv.grad().to_vector<double>(), read_values(dir / ("dx_" + s + ".txt")), tol, "dx " + s);
    expect_close(wv.grad().to_vector<double>(), read_values(dir / ("dw_" + s + ".txt")), tol, "dw " + s);
    expect_close(bv.grad().to_vector<double>(), read_values(dir / ("db_" + s + ".txt")), tol, "db " + s);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace kiln
