// max_pool2d, avg_pool2d and adaptive_avg_pool2d on the CPU: forward against naive loops
// written from PyTorch's definitions (padding, strides, non-square and overlapping windows,
// count_include_pad, adaptive windows that overlap or repeat), gradients by finite
// differences in f64 (max pool on distinct values), hand-derived results for ties, padding
// and NaN, 16-bit floats, argument errors and the nn modules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "nn/pool.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::uniform_values;

// n distinct values k/n for k in a random order: any two differ by at least 1/n, far more than
// a finite-difference step, so no window has a tie.
std::vector<double> distinct_values(int64_t n, uint32_t seed) {
  std::vector<double> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.0);
  std::shuffle(v.begin(), v.end(), std::mt19937(seed));
  for (double& x : v) x = x / static_cast<double>(n) - 0.5;
  return v;
}

Tensor f64_input(const std::vector<double>& v, const Shape& shape) {
  return from_vector(v, shape, {.dtype = DType::f64}).requires_grad_(true);
}

struct PoolCase {
  const char* name;
  int64_t N, C, H, W;
  Size2 kernel, stride, padding;
};

std::vector<PoolCase> pool_cases() {
  return {
      {"2x2 stride 2", 2, 3, 6, 8, 2, 2, 0},
      {"3x3 stride 2 padding 1", 2, 2, 7, 7, 3, 2, 1},
      {"odd size, floor", 1, 3, 7, 5, 2, 2, 0},
      {"overlapping 3x3 stride 1", 2, 2, 5, 6, 3, 1, 0},
      {"non-square", 2, 2, 7, 9, {2, 3}, {1, 2}, {1, 1}},
      {"stride larger than kernel", 1, 2, 9, 8, 2, 3, 1},
      {"kernel 4 padding 2", 1, 1, 5, 6, 4, {1, 3}, 2},
  };
}

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p) { return (in + 2 * p - k) / s + 1; }

// PyTorch's definitions, one output at a time: the window [o*s - p, o*s - p + k) clipped to the
// input for max and for the sum; avg's divisor is the window clipped to the padded input
// [-p, in + p) when count_include_pad, else to the input.
enum class Kind { max, avg_include_pad, avg_exclude_pad };

std::vector<double> ref_pool(const PoolCase& c, const std::vector<double>& x, Kind kind) {
  const int64_t OH = out_size(c.H, c.kernel.h, c.stride.h, c.padding.h);
  const int64_t OW = out_size(c.W, c.kernel.w, c.stride.w, c.padding.w);
  std::vector<double> y;
  for (int64_t p = 0; p < c.N * c.C; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t h0 = oh * c.stride.h - c.padding.h, w0 = ow * c.stride.w - c.padding.w;
        double best = -std::numeric_limits<double>::infinity(), sum = 0;
        int64_t inside = 0, padded = 0;
        for (int64_t h = h0; h < h0 + c.kernel.h; ++h)
          for (int64_t w = w0; w < w0 + c.kernel.w; ++w) {
            if (h < c.H + c.padding.h && w < c.W + c.padding.w) ++padded;
            if (h < 0 || h >= c.H || w < 0 || w >= c.W) continue;
            const double v = x[(p * c.H + h) * c.W + w];
            best = std::max(best, v);
            sum += v;
            ++inside;
          }
        y.push_back(kind == Kind::max ? best : sum / (kind == Kind::avg_include_pad ? padded : inside));
      }
  return y;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << what << " element " << i;
}

TEST(MaxPool2d, MatchesNaiveLoops) {
  uint32_t seed = 1;
  for (const PoolCase& c : pool_cases()) {
    for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
      const Shape shape = {c.N, c.C, c.H, c.W};
      const Tensor x = from_vector(uniform_values(shape_numel(shape), -2, 2, ++seed), shape, {.dtype = dtype});
      const Tensor y = max_pool2d(x, c.kernel, c.stride, c.padding);
      EXPECT_EQ(y.shape(), Shape({c.N, c.C, out_size(c.H, c.kernel.h, c.stride.h, c.padding.h),
                                  out_size(c.W, c.kernel.w, c.stride.w, c.padding.w)}))
          << c.name;
      EXPECT_EQ(y.dtype(), dtype);
      // A max picks one of the inputs: exact in every dtype.
      expect_close(y.to_vector<double>(), ref_pool(c, x.to_vector<double>(), Kind::max), 0.0,
                   std::string(c.name) + " " + std::string(dtype_name(dtype)));
    }
  }
}

TEST(AvgPool2d, MatchesNaiveLoops) {
  uint32_t seed = 100;
  for (const PoolCase& c : pool_cases()) {
    for (bool include_pad : {true, false}) {
      for (DType dtype : {DType::f64, DType::f32}) {
        const Shape shape = {c.N, c.C, c.H, c.W};
        const Tensor x = from_vector(uniform_values(shape_numel(shape), -2, 2, ++seed), shape, {.dtype = dtype});
        const Tensor y = avg_pool2d(x, c.kernel, c.stride, c.padding, include_pad);
        expect_close(y.to_vector<double>(),
                     ref_pool(c, x.to_vector<double>(), include_pad ? Kind::avg_include_pad : Kind::avg_exclude_pad),
                     dtype == DType::f64 ? 1e-14 : 1e-6,
                     std::string(c.name) + (include_pad ? " include_pad" : " exclude_pad"));
      }
    }
  }
}

TEST(Pool2d, StrideDefaultsToKernelAndUnbatchedInput) {
  const std::vector<double> v = uniform_values(3 * 6 * 4, -1, 1, 5);
  const Tensor x4 = from_vector(v, {1, 3, 6, 4}), x3 = from_vector(v, {3, 6, 4});
  const Tensor y = max_pool2d(x4, 2);
  EXPECT_EQ(y.shape(), Shape({1, 3, 3, 2}));
  EXPECT_EQ(y.to_vector<double>(), max_pool2d(x4, 2, 2).to_vector<double>());
  const Tensor y3 = max_pool2d(x3, 2);
  EXPECT_EQ(y3.shape(), Shape({3, 3, 2}));
  EXPECT_EQ(y3.to_vector<double>(), y.to_vector<double>());
  EXPECT_EQ(avg_pool2d(x3, {3, 2}).shape(), Shape({3, 2, 2}));
  EXPECT_EQ(avg_pool2d(x3, {3, 2}).to_vector<double>(), avg_pool2d(x4, {3, 2}, Size2{3, 2}).to_vector<double>());
  EXPECT_EQ(adaptive_avg_pool2d(x3, 2).shape(), Shape({3, 2, 2}));
  // Non-contiguous input: the transpose of a [.., 4, 6] tensor.
  const Tensor xt = from_vector(v, {1, 3, 4, 6}).transpose(2, 3);
  PoolCase c = {"transposed", 1, 3, 6, 4, 2, 2, 0};
  expect_close(max_pool2d(xt, 2).to_vector<double>(), ref_pool(c, xt.contiguous().to_vector<double>(), Kind::max),
               0.0, "transposed input");
}

// ---------------------------------------------------------------- adaptive
// Cell i of out covers [floor(i*in/out), ceil((i+1)*in/out)).
std::vector<double> ref_adaptive(const std::vector<double>& x, int64_t planes, int64_t H, int64_t W,
                                 int64_t OH, int64_t OW) {
  std::vector<double> y;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t h0 = static_cast<int64_t>(std::floor(double(oh) * H / OH));
        const int64_t h1 = static_cast<int64_t>(std::ceil(double(oh + 1) * H / OH));
        const int64_t w0 = static_cast<int64_t>(std::floor(double(ow) * W / OW));
        const int64_t w1 = static_cast<int64_t>(std::ceil(double(ow + 1) * W / OW));
        double sum = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) sum += x[(p * H + h) * W + w];
        y.push_back(sum / double((h1 - h0) * (w1 - w0)));
      }
  return y;
}

TEST(AdaptiveAvgPool2d, MatchesNaiveLoops) {
  struct Case {
    int64_t H, W, OH, OW;
  };
  // Uneven splits with overlapping cells, global pooling, identity, and more cells than inputs.
  for (const Case& c : {Case{7, 5, 3, 2}, Case{6, 6, 1, 1}, Case{4, 4, 4, 4}, Case{3, 3, 5, 4}, Case{10, 7, 4, 3}}) {
    const std::vector<double> v = uniform_values(2 * 3 * c.H * c.W, -1, 1, static_cast<uint32_t>(c.H * 10 + c.OH));
    for (DType dtype : {DType::f64, DType::f32}) {
      const Tensor x = from_vector(v, {2, 3, c.H, c.W}, {.dtype = dtype});
      const Tensor y = adaptive_avg_pool2d(x, {c.OH, c.OW});
      EXPECT_EQ(y.shape(), Shape({2, 3, c.OH, c.OW}));
      expect_close(y.to_vector<double>(), ref_adaptive(x.to_vector<double>(), 6, c.H, c.W, c.OH, c.OW),
                   dtype == DType::f64 ? 1e-14 : 1e-6,
                   "adaptive " + std::to_string(c.H) + "x" + std::to_string(c.W) + " -> " +
                       std::to_string(c.OH) + "x" + std::to_string(c.OW));
    }
  }
  // Identity size gives the input back; output_size 1 gives the plane means.
  const Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2});
  EXPECT_EQ(adaptive_avg_pool2d(x, 2).to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(adaptive_avg_pool2d(x, 1).to_vector<double>(), std::vector<double>({2.5, 6.5}));
}

// ---------------------------------------------------------------- gradients
TEST(Pool2dGrad, Gradcheck) {
  for (const PoolCase& c : pool_cases()) {
    const Shape shape = {c.N, c.C, c.H, c.W};
    const Tensor xd = f64_input(distinct_values(shape_numel(shape), 7), shape);
    EXPECT_GRADCHECK([&](auto& in) { return max_pool2d(in[0], c.kernel, c.stride, c.padding); }, {xd}) << c.name;
    const Tensor x = testing::rand_input(shape, -1, 1, 8);
    EXPECT_GRADCHECK([&](auto& in) { return avg_pool2d(in[0], c.kernel, c.stride, c.padding, true); }, {x})
        << c.name;
    EXPECT_GRADCHECK([&](auto& in) { return avg_pool2d(in[0], c.kernel, c.stride, c.padding, false); }, {x})
        << c.name;
  }
  const Tensor x = testing::rand_input({2, 2, 7, 5}, -1, 1, 9);
  for (Size2 out : {Size2{3, 2}, Size2{1, 1}, Size2{9, 6}, Size2{7, 5}})
    EXPECT_GRADCHECK([&](auto& in) { return adaptive_avg_pool2d(in[0], out); }, {x});
  // A non-contiguous input view.
  const Tensor xt = f64_input(distinct_values(2 * 6 * 5, 10), {2, 6, 5});
  EXPECT_GRADCHECK([&](auto& in) { return max_pool2d(in[0].transpose(1, 2), 3, 1, 1); }, {xt});
}

// Ties: the first maximum in row-major order of each window takes the whole gradient.
TEST(MaxPool2dGrad, TiesGoToTheFirstMaximum) {
  Tensor x = full({1, 1, 4, 4}, 3.0, {.dtype = DType::f64}).requires_grad_(true);
  sum(max_pool2d(x, 2)).backward();
  // Windows start at (0,0), (0,2), (2,0), (2,2); each sends 1 to its top-left element.
  EXPECT_EQ(x.grad().to_vector<double>(),
            std::vector<double>({1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0}));
  // Overlapping windows of a 3x4 constant with kernel 3, stride 1: the two windows start at
  // columns 0 and 1, so (0,0) and (0,1) get one each.
  Tensor y = full({1, 3, 4}, -1.0, {.dtype = DType::f64}).requires_grad_(true);
  sum(max_pool2d(y, 3, 1)).backward();
  EXPECT_EQ(y.grad().to_vector<double>(), std::vector<double>({1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  // Overlapping windows that pick the same element sum their gradients there: in [[0, 5, 0, 0]],
  // kernel (1, 2) stride 1 has windows {0,5}, {5,0}, {0,0}: 5 gets two, the third window's tie
  // goes to column 2.
  Tensor z = from_vector(std::vector<double>{0, 5, 0, 0}, {1, 1, 4}, {.dtype = DType::f64}).requires_grad_(true);
  const Tensor mz = max_pool2d(z, {1, 2}, 1);
  EXPECT_EQ(mz.to_vector<double>(), std::vector<double>({5, 5, 0}));
  sum(mz).backward();
  EXPECT_EQ(z.grad().to_vector<double>(), std::vector<double>({0, 2, 1, 0}));
}

// Padding is -inf for max (never chosen) and zeros counted or not for avg.
TEST(Pool2d, PaddingByHand) {
  const Tensor x = full({1, 1, 2, 2}, -5.0, {.dtype = DType::f64});
  // Kernel 3, stride 1, padding 1: 2x2 windows of the padded 4x4, each covering all 4 inputs.
  EXPECT_EQ(max_pool2d(x, 3, 1, 1).to_vector<double>(), std::vector<double>({-5, -5, -5, -5}));
  // Each 3x3 window holds the 4 inputs: -20 / 9 with the padding counted, -20 / 4 without.
  EXPECT_EQ(avg_pool2d(x, 3, 1, 1, true).to_vector<double>(), std::vector<double>(4, -20.0 / 9));
  EXPECT_EQ(avg_pool2d(x, 3, 1, 1, false).to_vector<double>(), std::vector<double>(4, -5.0));
  // Only the divisor depends on count_include_pad: a 1x5 row with kernel (1, 3), stride 2,
  // padding (0, 1) has windows [-1, 2), [1, 4), [3, 6) of 3 positions each, holding 2, 3 and 2
  // inputs.
  const Tensor row = from_vector(std::vector<double>{1, 2, 3, 4, 5}, {1, 1, 5}, {.dtype = DType::f64});
  EXPECT_EQ(avg_pool2d(row, {1, 3}, {1, 2}, {0, 1}, true).to_vector<double>(),
            std::vector<double>({3.0 / 3, 9.0 / 3, 9.0 / 3}));
  EXPECT_EQ(avg_pool2d(row, {1, 3}, {1, 2}, {0, 1}, false).to_vector<double>(),
            std::vector<double>({3.0 / 2, 9.0 / 3, 9.0 / 2}));
}

TEST(MaxPool2d, NanPropagates) {
  // [[1, 2, 3, 4], [NaN, 100, 7, 8]] with kernel 2: the first window meets the NaN before 100,
  // and 100 > NaN is false, so the NaN stays (as in PyTorch).
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, nan, 100, 7, 8}, {1, 2, 4}, {.dtype = DType::f64})
                 .requires_grad_(true);
  const Tensor y = max_pool2d(x, 2);
  const std::vector<double> v = y.to_vector<double>();
  ASSERT_EQ(v.size(), 2u);
  EXPECT_TRUE(std::isnan(v[0])) << v[0];
  EXPECT_EQ(v[1], 8.0);
  sum(y).backward();  // the gradient goes to the NaN's position
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>({0, 0, 0, 0, 1, 0, 0, 1}));
}

// ---------------------------------------------------------------- errors and modules
TEST(Pool2d, ErrorsNameTheProblem) {
  const Tensor x = zeros({2, 3, 5, 5});
  expect_error([&] { max_pool2d(x, 2, 2, 2); }, "padding (2, 2) must be between 0 and half the kernel (2, 2)");
  expect_error([&] { avg_pool2d(x, 3, 1, {0, 2}); }, "half the kernel");
  expect_error([&] { max_pool2d(x, 6); }, "kernel (6, 6) is larger than the padded input (5, 5)");
  expect_error([&] { max_pool2d(x, 0); }, "kernel must be positive");
  expect_error([&] { avg_pool2d(x, 2, 0); }, "stride must be positive");
  expect_error([&] { max_pool2d(zeros({5, 5}), 2); }, "expected input [N, C, H, W] or [C, H, W], got f32[5, 5]");
  expect_error([&] { max_pool2d(zeros({2, 3, 4}, {.dtype = DType::i64}), 2); }, "floating type");
  expect_error([&] { adaptive_avg_pool2d(x, {0, 2}); }, "output_size must be positive");
  expect_error([&] { adaptive_avg_pool2d(zeros({2, 3, 0, 4}), 2); }, "empty spatial dim");
}

TEST(PoolModules, ForwardAndRepr) {
  const Tensor x = from_vector(uniform_values(2 * 3 * 6 * 6, -1, 1, 3), {2, 3, 6, 6});
  nn::MaxPool2d mp(2);
  EXPECT_EQ(mp(x).to_vector<double>(), max_pool2d(x, 2).to_vector<double>());
  EXPECT_EQ(mp.repr(), "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=false)");
  EXPECT_EQ(nn::MaxPool2d({3, 2}, 1, {1, 0}).repr(),
            "MaxPool2d(kernel_size=(3, 2), stride=1, padding=(1, 0), dilation=1, ceil_mode=false)");
  nn::AvgPool2d ap(3, 2, 1);
  EXPECT_EQ(ap(x).to_vector<double>(), avg_pool2d(x, 3, 2, 1).to_vector<double>());
  EXPECT_EQ(ap.repr(), "AvgPool2d(kernel_size=3, stride=2, padding=1)");
  nn::AvgPool2d ap2(2, 2, 0, false);
  EXPECT_EQ(ap2.repr(), "AvgPool2d(kernel_size=2, stride=2, padding=0, count_include_pad=false)");
  nn::AdaptiveAvgPool2d gap(1);
  EXPECT_EQ(gap(x).shape(), Shape({2, 3, 1, 1}));
  EXPECT_EQ(gap.repr(), "AdaptiveAvgPool2d(output_size=1)");
  EXPECT_EQ(nn::AdaptiveAvgPool2d({2, 3}).repr(), "AdaptiveAvgPool2d(output_size=(2, 3))");
  EXPECT_EQ(mp.num_parameters(), 0);
}

}  // namespace
}  // namespace kiln
