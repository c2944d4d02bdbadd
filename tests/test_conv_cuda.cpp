// CUDA conv2d (cuDNN) against the CPU kernels, forward and all three gradients, for f32,
// bf16, f16 and f64, over strides, padding, dilation, groups (depthwise included), 1x1 and the
// Fashion-MNIST CNN's layer shapes. Both devices read identical inputs.
//
// Tolerances, as |cuda - cpu| <= rtol * |cpu| + atol_scale * max|cpu|:
//   f32  1e-4, 1e-5: both accumulate in f32 in different orders (~1e-6). TF32 would miss this
//        by an order of magnitude on the 576-term case, so it also checks that TF32 is off.
//   bf16 2e-2, 1e-2 and f16 1e-2, 2e-3: both round the f32 result once; sums that cancel
//        towards zero need the absolute part.
//   f64  1e-10, 1e-12.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/conv.cu,
// kernels/cuda/blas_handle.cu (its cuDNN handle).
#include <gtest/gtest.h>

#include <cmath>
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

// Every element within the tolerance: a NaN fails even against a NaN.
Tolerance tolerance(DType dtype) {
  switch (dtype) {
    case DType::bf16: return {.rtol = 2e-2, .atol_scale = 1e-2, .equal_values_pass = false};
    case DType::f16: return {.rtol = 1e-2, .atol_scale = 2e-3, .equal_values_pass = false};
    case DType::f64: return {.rtol = 1e-10, .atol_scale = 1e-12, .equal_values_pass = false};
    default: return {.rtol = 1e-4, .atol_scale = 1e-5, .equal_values_pass = false};
  }
}

// Uniform in [-1, 1).
Tensor random_cpu(const Shape& shape, DType dtype, uint64_t seed) {
  return testing::random_cpu(shape, -1.0, 1.0, dtype, seed);
}

struct ConvCase {
  const char* name;
  int64_t N, C, H, W, O, kH, kW;
  Size2 stride, padding, dilation;
  int64_t groups;
  bool bias;
};

std::vector<ConvCase> cases() {
  return {
      {"3x3 padding 1", 4, 8, 16, 16, 16, 3, 3, 1, 1, 1, 1, true},
      {"non-square stride, padding, kernel", 3, 5, 13, 11, 7, 3, 5, {2, 1}, {1, 2}, 1, 1, true},
      {"dilation 2", 2, 4, 12, 12, 6, 3, 3, 1, 2, 2, 1, true},
      {"stride 2 + padding + dilation + groups 2", 2, 8, 11, 10, 12, 3, 2, 2, 1, {2, 1}, 2, true},
      {"depthwise", 4, 16, 14, 14, 16, 3, 3, 1, 1, 1, 16, true},
      {"depthwise x2, 5x5 stride 2, no bias", 2, 8, 15, 15, 16, 5, 5, 2, 2, 1, 8, false},
      {"1x1", 8, 32, 7, 7, 64, 1, 1, 1, 0, 1, 1, true},
      {"576-term sums", 2, 64, 16, 16, 32, 3, 3, 1, 1, 1, 1, true},
      {"Fashion-MNIST conv1", 64, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, true},
      {"Fashion-MNIST conv2", 64, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, true},
  };
}

// Forward, then backward of sum(y * r), on both devices; compares y, dx, dw and db.
void check_case(const ConvCase& c, DType dtype, uint64_t seed) {
  const std::string what = std::string(c.name) + " " + std::string(dtype_name(dtype));
  const Tensor x0 = random_cpu({c.N, c.C, c.H, c.W}, dtype, seed);
  const Tensor w0 = random_cpu({c.O, c.C / c.groups, c.kH, c.kW}, dtype, seed + 1);
  const Tensor b0 = c.bias ? random_cpu({c.O}, dtype, seed + 2) : Tensor();

  Tensor x = x0.detach().requires_grad_(true), w = w0.detach().requires_grad_(true);
  Tensor b = c.bias ? b0.detach().requires_grad_(true) : Tensor();
  Tensor xc = x0.to(kCuda).detach().requires_grad_(true), wc = w0.to(kCuda).detach().requires_grad_(true);
  Tensor bc = c.bias ? b0.to(kCuda).detach().requires_grad_(true) : Tensor();

  const Tensor y = conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups);
  const Tensor yc = conv2d(xc, wc, bc, c.stride, c.padding, c.dilation, c.groups);
  const Tolerance tol = tolerance(dtype);
  expect_matches(yc, y, tol, what + " forward");

  const Tensor r = random_cpu(y.shape(), dtype, seed + 3);
  sum(mul(y, r)).backward();
  sum(mul(yc, r.to(kCuda))).backward();
  expect_matches(xc.grad(), x.grad(), tol, what + " dx");
  expect_matches(wc.grad(), w.grad(), tol, what + " dw");
  if (c.bias) expect_matches(bc.grad(), b.grad(), tol, what + " db");
}

TEST(Conv2dCuda, F32MatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (const ConvCase& c : cases()) check_case(c, DType::f32, seed += 10);
}

TEST(Conv2dCuda, Bf16MatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1000;
  for (const ConvCase& c : cases()) check_case(c, DType::bf16, seed += 10);
}

TEST(Conv2dCuda, F16MatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 2000;
  for (const ConvCase& c : cases()) check_case(c, DType::f16, seed += 10);
}

TEST(Conv2dCuda, F64MatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 3000;
  for (const ConvCase& c : cases()) check_case(c, DType::f64, seed += 10);
}

TEST(Conv2dCuda, UnbatchedInput) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = random_cpu({3, 9, 8}, DType::f32, 5), w = random_cpu({4, 3, 3, 3}, DType::f32, 6);
  const Tensor b = random_cpu({4}, DType::f32, 7);
  const Tensor yc = conv2d(x.to(kCuda), w.to(kCuda), b.to(kCuda), 2, 1);
  EXPECT_EQ(yc.shape(), Shape({4, 5, 4}));
  expect_matches(yc, conv2d(x, w, b, 2, 1), tolerance(DType::f32), "unbatched");
}

// Deterministic algorithms only: two identical backward passes give identical bits.
TEST(Conv2dCuda, BackwardIsDeterministic) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x0 = random_cpu({32, 16, 20, 20}, DType::f32, 11).to(kCuda);
  const Tensor w0 = random_cpu({32, 16, 3, 3}, DType::f32, 12).to(kCuda);
  const Tensor r = random_cpu({32, 32, 10, 10}, DType::f32, 13).to(kCuda);
  std::vector<std::vector<double>> grads;
  for (int run = 0; run < 2; ++run) {
    Tensor x = x0.detach().requires_grad_(true), w = w0.detach().requires_grad_(true);
    sum(mul(conv2d(x, w, Tensor(), 2, 1), r)).backward();
    grads.push_back(x.grad().cpu().to_vector<double>());
    grads.push_back(w.grad().cpu().to_vector<double>());
  }
  EXPECT_EQ(grads[0], grads[2]);
  EXPECT_EQ(grads[1], grads[3]);
}

TEST(Conv2dCuda, MixedDevicesAreAnError) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = random_cpu({1, 2, 5, 5}, DType::f32, 1), w = random_cpu({2, 2, 3, 3}, DType::f32, 2);
  EXPECT_THROW(conv2d(x.to(kCuda), w), Error);
  EXPECT_THROW(conv2d(x.to(kCuda), w.to(kCuda), random_cpu({2}, DType::f32, 3)), Error);
}

}  // namespace
}  // namespace kiln
