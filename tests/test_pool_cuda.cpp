// CUDA max, average and adaptive average pooling against the CPU kernels, forward and
// backward, in f32, bf16 and f64. The GPU backward gathers per input element in ascending
// output order, the order in which the CPU backward adds, in the same opmath type, so max
// pooling (which only selects and adds) must match exactly, ties and NaN included; average
// pooling divides before adding on both, and is held to 1e-5 relative (one bf16 rounding,
// 8e-3, for bf16).
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/pool.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::kCuda;

// Uniform in [-2, 2).
Tensor random_cpu(const Shape& shape, DType dtype, uint64_t seed) {
  return testing::random_cpu(shape, -2.0, 2.0, dtype, seed);
}

// |cuda - cpu| <= rtol * |cpu| (rtol 0: bit for bit; NaN matches NaN).
void expect_matches(const Tensor& cuda_result, const Tensor& cpu_result, double rtol, const std::string& what) {
  testing::expect_matches(cuda_result, cpu_result, {.rtol = rtol}, what);
}

struct PoolCase {
  const char* name;
  Shape shape;
  Size2 kernel, stride, padding;
};

std::vector<PoolCase> cases() {
  return {
      {"2x2 stride 2, Fashion-MNIST sized", {64, 32, 28, 28}, 2, 2, 0},
      {"3x3 stride 2 padding 1", {4, 8, 15, 15}, 3, 2, 1},
      {"overlapping 3x3 stride 1", {2, 4, 9, 10}, 3, 1, 1},
      {"non-square", {3, 5, 11, 7}, {2, 3}, {1, 2}, {1, 1}},
      {"stride larger than kernel", {2, 3, 13, 13}, 2, 3, 1},
      {"unbatched", {6, 8, 8}, 4, {2, 1}, 2},
  };
}

using PoolFn = Tensor (*)(const Tensor&, const PoolCase&);

Tensor run_max(const Tensor& x, const PoolCase& c) { return max_pool2d(x, c.kernel, c.stride, c.padding); }
Tensor run_avg(const Tensor& x, const PoolCase& c) { return avg_pool2d(x, c.kernel, c.stride, c.padding, true); }
Tensor run_avg_no_pad(const Tensor& x, const PoolCase& c) {
  return avg_pool2d(x, c.kernel, c.stride, c.padding, false);
}

// y = f(x) on both devices, then the gradient of sum(y * r).
void check(PoolFn f, const Tensor& x0, const PoolCase& c, double rtol, const std::string& what) {
  Tensor x = x0.detach().requires_grad_(true);
  Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
  const Tensor y = f(x, c), yc = f(xc, c);
  expect_matches(yc, y, rtol, what + " forward");
  const Tensor r = random_cpu(y.shape(), x0.dtype(), 99);
  sum(mul(y, r)).backward();
  sum(mul(yc, r.to(kCuda))).backward();
  expect_matches(xc.grad(), x.grad(), rtol, what + " backward");
}

double avg_rtol(DType dtype) { return dtype == DType::bf16 ? 8e-3 : 1e-5; }

TEST(Pool2dCuda, MaxMatchesCpuExactly) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    for (const PoolCase& c : cases()) {
      const std::string what = std::string("max_pool2d ") + c.name + " " + std::string(dtype_name(dtype));
      check(run_max, random_cpu(c.shape, dtype, ++seed), c, 0.0, what);
      // Every window a tie: the first element must win on both devices.
      check(run_max, zeros(c.shape, {.dtype = dtype}), c, 0.0, what + ", all ties");
      // bf16 has only 256 values in [1, 2): many ties among random values too.
      check(run_max, add(mul(random_cpu(c.shape, DType::f32, ++seed), 0.05), 1.5).to(dtype), c, 0.0,
            what + ", frequent ties");
    }
  }
}

TEST(Pool2dCuda, MaxPropagatesNanLikeCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  std::vector<double> v = random_cpu({2, 3, 6, 6}, DType::f32, 7).to_vector<double>();
  for (size_t i = 0; i < v.size(); i += 17) v[i] = std::numeric_limits<double>::quiet_NaN();
  const PoolCase c = {"nan", {2, 3, 6, 6}, 3, 2, 1};
  check(run_max, from_vector(v, c.shape), c, 0.0, "max_pool2d with NaN");
}

TEST(Pool2dCuda, AvgMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    for (const PoolCase& c : cases()) {
      const std::string name = std::string(c.name) + " " + std::string(dtype_name(dtype));
      const Tensor x = random_cpu(c.shape, dtype, ++seed);
      check(run_avg, x, c, avg_rtol(dtype), "avg_pool2d " + name);
      check(run_avg_no_pad, x, c, avg_rtol(dtype), "avg_pool2d count_include_pad=false " + name);
    }
  }
}

TEST(Pool2dCuda, AdaptiveAvgMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  struct Case {
    Shape shape;
    Size2 out;
  };
  // Uneven overlapping cells, global pooling, identity, more cells than inputs.
  const std::vector<Case> adaptive = {{{4, 8, 7, 5}, {3, 2}}, {{8, 64, 7, 7}, 1}, {{2, 3, 6, 6}, 6},
                                      {{2, 3, 3, 4}, {5, 9}}, {{3, 10, 7}, {4, 3}}};
  uint64_t seed = 200;
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    for (const Case& a : adaptive) {
      const Tensor x0 = random_cpu(a.shape, dtype, ++seed);
      Tensor x = x0.detach().requires_grad_(true);
      Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
      const Tensor y = adaptive_avg_pool2d(x, a.out), yc = adaptive_avg_pool2d(xc, a.out);
      const std::string what = "adaptive_avg_pool2d " + shape_str(a.shape) + " -> (" + std::to_string(a.out.h) +
                               ", " + std::to_string(a.out.w) + ") " + std::string(dtype_name(dtype));
      expect_matches(yc, y, avg_rtol(dtype), what);
      const Tensor r = random_cpu(y.shape(), dtype, 99);
      sum(mul(y, r)).backward();
      sum(mul(yc, r.to(kCuda))).backward();
      expect_matches(xc.grad(), x.grad(), avg_rtol(dtype), what + " backward");
    }
  }
}

}  // namespace
}  // namespace kiln
