// CUDA softmax, log_softmax and cross_entropy against the CPU kernels, forward and backward,
// in f32 and bf16. Both devices read identical inputs and compute in f32 in different
// orders (and with different exp implementations), so f32 agrees to ~1e-6 relative (checked
// at 1e-5) and bf16 to about one bf16 rounding (checked at 1e-2). An absolute slack of a
// small fraction of the largest reference value covers elements that cancel to near zero
// (y * (g - dot), p - e/C).
//
// The shapes cover each kernel path of kernels/cuda/softmax.cu: one warp per row at each
// register count (1 to 32 values per lane), one block per row with and without 16-byte
// vector access (a 50257-word vocabulary is odd, so never aligned), and the strided kernel
// (softmax over a middle dim).
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/softmax.cu,
// kernels/cuda/online_softmax.cuh, kernels/cuda/vector_access.cuh, kernels/cuda/block_reduce.cuh.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
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
using testing::random_cpu;
using testing::Tolerance;

Tolerance tolerance(DType dtype) {
  return dtype == DType::bf16 ? Tolerance{.rtol = 1e-2, .atol_scale = 1e-3}
                              : Tolerance{.rtol = 1e-5, .atol_scale = 1e-6};
}

// Class indices in [0, classes), every `ignore_every`-th one replaced by -100.
Tensor random_targets(const Shape& shape, int64_t classes, int ignore_every, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, classes - 1);
  std::vector<int64_t> t(shape_numel(shape));
  for (size_t i = 0; i < t.size(); ++i) t[i] = ignore_every > 0 && i % ignore_every == 1 ? -100 : dist(rng);
  return from_vector(t, shape);
}

std::string shape_label(const Shape& shape, DType dtype) {
  return std::string(dtype_name(dtype)) + " " + shape_str(shape);
}

struct SoftmaxCase {
  Shape shape;
  int64_t dim;
  const char* path;
};

std::vector<SoftmaxCase> softmax_cases() {
  return {
      {{33, 10}, -1, "warp, 1 per lane"},
      {{7, 100}, 1, "warp, 4 per lane"},
      {{9, 300}, 1, "warp, 16 per lane"},
      {{64, 1000}, 1, "warp, 32 per lane"},
      {{5, 1024}, 1, "warp, 32 per lane, full"},
      {{6, 1025}, 1, "block, scalar"},
      {{8, 4096}, 1, "block, vector"},
      {{3, 5, 2048}, 2, "block, vector, 3-D"},
      {{16, 50257}, 1, "block, scalar, GPT-2 vocabulary"},
      {{4, 33, 17}, 1, "strided"},
      {{2, 3000, 4}, 1, "strided, long"},
      {{40, 6}, 0, "strided, dim 0"},
  };
}

TEST(SoftmaxCuda, ForwardAndBackwardMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const SoftmaxCase& c : softmax_cases()) {
      const Tensor x0 = random_cpu(c.shape, -8, 8, dtype, ++seed);
      const Tensor g = random_cpu(c.shape, -1, 1, dtype, ++seed);
      for (bool log : {false, true}) {
        auto op = [log](const Tensor& x, int64_t dim) { return log ? log_softmax(x, dim) : softmax(x, dim); };
        const std::string what = std::string(log ? "log_softmax " : "softmax ") +
                                 shape_label(c.shape, dtype) + " (" + c.path + ")";
        Tensor x = x0.detach().requires_grad_(true);
        Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
        const Tensor y = op(x, c.dim), yc = op(xc, c.dim);
        expect_matches(yc, y, tol, what);
        y.backward(g);
        yc.backward(g.to(kCuda));
        expect_matches(xc.grad(), x.grad(), tol, what + " backward");
      }
    }
  }
}

TEST(SoftmaxCuda, StableForHugeLogits) {
  KILN_SKIP_WITHOUT_CUDA();
  for (int64_t classes : {3, 3000}) {  // the warp and the block kernel
    std::vector<double> v(2 * classes, -1e4);
    v[0] = 1e4;
    v[classes + 1] = 1e4;
    v[classes + 2] = 1e4;
    const Tensor x = from_vector(v, {2, classes}).to(kCuda);
    const std::vector<double> y = softmax(x, 1).cpu().to_vector<double>();
    const std::vector<double> ly = log_softmax(x, 1).cpu().to_vector<double>();
    for (size_t i = 0; i < y.size(); ++i) {
      EXPECT_TRUE(std::isfinite(y[i]) && std::isfinite(ly[i])) << i;
    }
    EXPECT_EQ(y[0], 1.0);
    EXPECT_EQ(y[classes + 1], 0.5);
    EXPECT_NEAR(ly[classes + 2], -std::log(2.0), 1e-6);
    const Tensor targets = from_vector(std::vector<int64_t>{1, 2}, {2}).to(kCuda);
    const double loss = cross_entropy(x, targets, -100, Reduction::mean, 0.1).item();
    EXPECT_TRUE(std::isfinite(loss)) << loss;
  }
}

struct CrossEntropyCase {
  Shape logits;
  Shape targets;
  const char* path;
};

TEST(CrossEntropyCuda, ForwardAndBackwardMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const std::vector<CrossEntropyCase> cases = {
      {{32, 50257}, {32}, "GPT-2 vocabulary, scalar loads"},
      {{64, 1000}, {64}, "small rows"},
      {{8, 4096}, {8}, "vector loads"},
      {{4, 10, 3, 5}, {4, 3, 5}, "[N, C, d1, d2]"},
  };
  uint64_t seed = 50;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const CrossEntropyCase& c : cases) {
      const Tensor x0 = random_cpu(c.logits, -4, 4, dtype, ++seed);
      const Tensor t = random_targets(c.targets, c.logits[1], 5, static_cast<uint32_t>(++seed));
      for (double e : {0.0, 0.1}) {
        const std::string what = "cross_entropy " + shape_label(c.logits, dtype) + " (" + c.path +
                                 "), label_smoothing " + std::to_string(e);
        const Tensor tc = t.to(kCuda);
        expect_matches(cross_entropy(x0.to(kCuda), tc, -100, Reduction::none, e),
                       cross_entropy(x0, t, -100, Reduction::none, e), tol, what + " none");
        expect_matches(cross_entropy(x0.to(kCuda), tc.to(DType::i32), -100, Reduction::sum, e),
                       cross_entropy(x0, t, -100, Reduction::sum, e), tol, what + " sum, i32 targets");
        Tensor x = x0.detach().requires_grad_(true);
        Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
        const Tensor loss = cross_entropy(x, t, -100, Reduction::mean, e);
        const Tensor loss_c = cross_entropy(xc, tc, -100, Reduction::mean, e);
        expect_matches(loss_c, loss, tol, what + " mean");
        loss.backward();
        loss_c.backward();
        expect_matches(xc.grad(), x.grad(), tol, what + " mean backward");
      }
    }
  }
}

TEST(CrossEntropyCuda, IgnoredAndInvalidTargets) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x0 = random_cpu({3, 5}, -2, 2, DType::f32, 77);
  // Ignored rows: zero loss and zero gradient.
  Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
  const Tensor t = from_vector(std::vector<int64_t>{-100, 3, -100}, {3}).to(kCuda);
  const std::vector<double> losses = cross_entropy(xc, t, -100, Reduction::none).cpu().to_vector<double>();
  EXPECT_EQ(losses[0], 0.0);
  EXPECT_GT(losses[1], 0.0);
  EXPECT_EQ(losses[2], 0.0);
  cross_entropy(xc, t).backward();
  const std::vector<double> g = xc.grad().cpu().to_vector<double>();
  for (int64_t k : {0, 1, 2, 3, 4, 10, 11, 12, 13, 14}) EXPECT_EQ(g[k], 0.0) << k;
  // The GPU cannot throw from a kernel: an out-of-range target gives a NaN loss instead.
  const Tensor bad = from_vector(std::vector<int64_t>{0, 7, 1}, {3}).to(kCuda);
  const std::vector<double> l = cross_entropy(x0.to(kCuda), bad, -100, Reduction::none).cpu().to_vector<double>();
  EXPECT_TRUE(std::isfinite(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
  EXPECT_TRUE(std::isfinite(l[2]));
}

}  // namespace
}  // namespace kiln
