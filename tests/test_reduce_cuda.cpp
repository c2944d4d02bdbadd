// CUDA reductions against the CPU ones, forward and backward, in f32 and bf16. Both devices
// read the same values (generated on the CPU, rounded to the dtype, then copied) and
// accumulate in f32, in different orders, so f32 results agree to ~1e-6 relative (checked at
// 1e-5) and bf16 results to about one bf16 rounding (checked at 1e-2). max, min, argmax and
// argmin compare values without arithmetic and must match exactly, ties included.
//
// The shapes cover each kernel path of kernels/cuda/reduce.cu: one warp per row (short
// rows), one block per row (16-byte vector loads, and misaligned rows without them), split
// rows with two passes (few very long rows, and a full sum of 1<<24 elements), the column
// kernel (inner > 1), the column kernel split along the reduced dim, and permuted inputs.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/reduce.cu,
// kernels/cuda/block_reduce.cuh.
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
using testing::random_cpu;
using testing::Tolerance;

Tolerance tolerance(DType dtype) {
  return dtype == DType::bf16 ? Tolerance{.rtol = 1e-2, .atol_scale = 1e-3}
                              : Tolerance{.rtol = 1e-5, .atol_scale = 1e-6};
}

struct Case {
  Shape shape;
  std::vector<int64_t> dims;
  const char* path;  // the CUDA kernel this case exercises
};

std::vector<Case> cases() {
  return {
      {{37, 500}, {1}, "warp per row"},
      {{1000}, {}, "warp per row, full"},
      {{64, 5000}, {1}, "block per row, vector loads"},
      {{16, 5001}, {-1}, "block per row, misaligned rows"},
      {{3, 100003}, {1}, "split rows, scalar loads"},
      {{2, 1 << 17}, {1}, "split rows, vector loads"},
      {{300, 7, 33}, {1}, "columns"},
      {{2, 70000, 3}, {1}, "columns split along the reduced dim"},
      {{4096, 96}, {0}, "columns split: a bias-gradient shape"},
      {{5, 6, 7, 8}, {0, 2}, "permuted, then rows"},
      {{6, 40, 50}, {0, 1}, "contiguous block of dims, then columns"},
  };
}

std::string label(const Case& c, DType dtype, const char* op) {
  std::string s = std::string(op) + " " + std::string(dtype_name(dtype)) + " [";
  for (size_t i = 0; i < c.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(c.shape[i]);
  return s + "] (" + c.path + ")";
}

TEST(ReduceCuda, ForwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    const Tolerance exact{};
    for (const Case& c : cases()) {
      // Positive values: sums without cancellation, so a relative tolerance means something.
      const Tensor x = random_cpu(c.shape, 0.5, 2.0, dtype, ++seed);
      const Tensor xc = x.to(kCuda);
      expect_matches(sum(xc, c.dims), sum(x, c.dims), tol, label(c, dtype, "sum"));
      expect_matches(mean(xc, c.dims, true), mean(x, c.dims, true), tol, label(c, dtype, "mean"));
      expect_matches(var(xc, c.dims), var(x, c.dims), tol, label(c, dtype, "var"));
      expect_matches(var(xc, c.dims, 0), var(x, c.dims, 0), tol, label(c, dtype, "var(correction 0)"));
      expect_matches(max(xc, c.dims), max(x, c.dims), exact, label(c, dtype, "max"));
      expect_matches(min(xc, c.dims), min(x, c.dims), exact, label(c, dtype, "min"));
      if (c.dims.size() == 1) {
        // bf16 has few distinct values, so these rows are full of ties.
        expect_matches(argmax(xc, c.dims[0]), argmax(x, c.dims[0]), exact, label(c, dtype, "argmax"));
        expect_matches(argmin(xc, c.dims[0]), argmin(x, c.dims[0]), exact, label(c, dtype, "argmin"));
      }
    }
  }
}

TEST(ReduceCuda, FullSumOf16MElements) {
  KILN_SKIP_WITHOUT_CUDA();
  const int64_t n = int64_t{1} << 24;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor x = random_cpu({n}, 0, 1, dtype, 7);
    const Tensor xc = x.to(kCuda);
    expect_matches(sum(xc), sum(x), tolerance(dtype), std::string("sum of 1<<24 ") + std::string(dtype_name(dtype)));
    expect_matches(mean(xc), mean(x), tolerance(dtype), "mean of 1<<24");
    expect_matches(max(xc), max(x), {0, 0}, "max of 1<<24");
    expect_matches(argmin(xc, 0), argmin(x, 0), {0, 0}, "argmin of 1<<24");
    // Deterministic: no atomics, so a second run is bit-identical.
    EXPECT_EQ(sum(xc).item(), sum(xc).item());
  }
  // A long f32 sum is also accurate, not just equal to the CPU's: compare with f64.
  const Tensor x = random_cpu({n}, 0, 1, DType::f32, 8);
  const double exact = sum(x.to(DType::f64)).item();
  EXPECT_NEAR(sum(x.to(kCuda)).item(), exact, 1e-6 * exact);
}

TEST(ReduceCuda, IntegersAndSpecialValues) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor xi = from_vector(std::vector<int64_t>{5, -3, 7, 7, 0, 2000000000, 2000000000, 1}, {2, 4}).to(DType::i32);
  const Tensor xic = xi.to(kCuda);
  expect_matches(sum(xic, {1}), sum(xi, {1}), {0, 0}, "i32 sum (counted in i64)");
  expect_matches(max(xic, {1}), max(xi, {1}), {0, 0}, "i32 max");
  expect_matches(argmax(xic, 1), argmax(xi, 1), {0, 0}, "i32 argmax ties");
  expect_matches(argmin(xic, 0), argmin(xi, 0), {0, 0}, "i32 argmin");
  const double nan = std::nan(""), inf = INFINITY;
  const Tensor xf = from_vector(std::vector<double>{1, nan, 3, -inf, -inf, -inf, 2, 2, 2}, {3, 3});
  const Tensor xfc = xf.to(kCuda);
  expect_matches(max(xfc, {1}), max(xf, {1}), {0, 0}, "max with NaN and -inf rows");
  expect_matches(min(xfc, {0}), min(xf, {0}), {0, 0}, "min with NaN (columns)");
  expect_matches(argmax(xfc, 1), argmax(xf, 1), {0, 0}, "argmax with NaN, -inf, ties");
  expect_matches(argmin(xfc, 0), argmin(xf, 0), {0, 0}, "argmin columns");
  expect_matches(sum(zeros({3, 0}).to(kCuda), {1}), sum(zeros({3, 0}), {1}), {0, 0}, "empty sum");
}

TEST(ReduceCuda, BackwardMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 500;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const Case& c : cases()) {
      if (shape_numel(c.shape) > (1 << 19)) continue;  // the long rows add nothing here
      const Tensor x0 = random_cpu(c.shape, -1, 1, dtype, ++seed);
      struct Op {
        const char* name;
        Tensor (*fn)(const Tensor&, const std::vector<int64_t>&);
      };
      const Op ops[] = {
          {"sum", [](const Tensor& x, const std::vector<int64_t>& d) { return sum(x, d); }},
          {"mean", [](const Tensor& x, const std::vector<int64_t>& d) { return mean(x, d); }},
          {"var", [](const Tensor& x, const std::vector<int64_t>& d) { return var(x, d); }},
          {"max", [](const Tensor& x, const std::vector<int64_t>& d) { return max(x, d); }},
          {"min", [](const Tensor& x, const std::vector<int64_t>& d) { return min(x, d); }},
      };
      for (const Op& op : ops) {
        Tensor x = x0.detach().requires_grad_(true);
        Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
        const Tensor y = op.fn(x, c.dims);
        const Tensor g = random_cpu(y.shape(), -1, 1, dtype, ++seed);
        y.backward(g);
        op.fn(xc, c.dims).backward(g.to(kCuda));
        expect_matches(xc.grad(), x.grad(), tol, label(c, dtype, op.name) + " backward");
      }
    }
  }
}

TEST(ReduceCuda, SumToMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor x = random_cpu({8, 32, 768}, 0.5, 2, dtype, 9);
    const Tensor xc = x.to(kCuda);
    for (const Shape& target : {Shape{768}, Shape{32, 1}, Shape{8, 1, 768}, Shape{1, 32, 768}})
      expect_matches(sum_to(xc, target), sum_to(x, target), tolerance(dtype), "sum_to");
  }
}

}  // namespace
}  // namespace kiln
