// CUDA batch_norm against the CPU kernels: forward, backward (input, weight and bias) and the
// running statistics, in training and eval mode, for f32 and bf16 inputs (f32 parameters and
// statistics). The CPU reduces in double, the GPU in f32 trees, so f32 agrees to ~1e-6
// relative (checked at 1e-5, with an absolute slack of 1e-5 of the tensor's largest value
// for elements that cancel to near zero) and bf16 to one bf16 rounding of the output
// (checked at 2e-2). Also: repeated runs are bit-identical (no atomics), and
// nn::BatchNorm2d moved to the GPU trains and counts batches there.
//
// The shapes cover the kernels' cases: [N, C] (one value per run, strided reads), [N, C, L],
// [N, C, H, W] with runs longer and shorter than a block, more channels than the grid's
// 65536 blocks (the grid-stride loop over channels), and a channel of 120000 values.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/norm.cu,
// kernels/cuda/block_reduce.cuh.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/batchnorm.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_matches;
using testing::kCuda;
using testing::random_cpu;
using testing::Tolerance;

// Every element within the tolerance: a NaN fails even against a NaN.
Tolerance tolerance(DType dtype) {
  return dtype == DType::bf16 ? Tolerance{.rtol = 2e-2, .atol_scale = 2e-3, .equal_values_pass = false}
                              : Tolerance{.rtol = 1e-5, .atol_scale = 1e-5, .equal_values_pass = false};
}

struct Case {
  Shape shape;
  const char* path;
};

std::vector<Case> cases() {
  return {
      {{64, 100}, "[N, C]"},
      {{4096, 6}, "[N, C], long channels"},
      {{5, 7, 33}, "[N, C, L]"},
      {{8, 16, 28, 28}, "[N, C, H, W], runs longer than a block"},
      {{3, 5, 7, 9}, "[N, C, H, W], odd sizes"},
      // 8 values per channel: with 2 to 4, some of 70000 channels have nearly equal values,
      // and invstd ~ 1 / spread magnifies the devices' 1-ulp difference in the mean past 1e-5.
      {{8, 70000}, "more channels than blocks"},
      {{2, 2, 300, 200}, "120000 values per channel"},
  };
}

// One set of tensors on one device: the input, the parameters and the running statistics.
struct DeviceRun {
  Tensor x, w, b, rm, rv;
  Tensor y, dx, dw, db;
};

DeviceRun make_run(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& rm, const Tensor& rv,
             Device device) {
  DeviceRun r;
  r.x = x.to(device).detach().requires_grad_(true);
  r.w = w.to(device).detach().requires_grad_(true);
  r.b = b.to(device).detach().requires_grad_(true);
  r.rm = rm.to(device).clone();
  r.rv = rv.to(device).clone();
  return r;
}

void forward_backward(DeviceRun& r, bool training, const Tensor& gy) {
  r.y = batch_norm(r.x, r.w, r.b, r.rm, r.rv, training, 0.1, 1e-5);
  r.y.backward(gy.to(r.x.device()));
  r.dx = r.x.grad();
  r.dw = r.w.grad();
  r.db = r.b.grad();
}

TEST(BatchNormCuda, ForwardBackwardAndRunningStatsMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const Case& c : cases()) {
      const int64_t channels = c.shape[1];
      const Tensor x = random_cpu(c.shape, -1, 3, dtype, ++seed);  // mean 1: centring matters
      const Tensor gy = random_cpu(c.shape, -1, 1, dtype, ++seed);
      const Tensor w = random_cpu({channels}, 0.5, 1.5, DType::f32, ++seed);
      const Tensor b = random_cpu({channels}, -1, 1, DType::f32, ++seed);
      const Tensor rm = random_cpu({channels}, -0.5, 0.5, DType::f32, ++seed);
      const Tensor rv = random_cpu({channels}, 0.5, 2, DType::f32, ++seed);
      for (bool training : {true, false}) {
        const std::string what = std::string(dtype_name(dtype)) + " " + shape_str(c.shape) + " (" +
                                 c.path + ")" + (training ? " training" : " eval");
        DeviceRun cpu = make_run(x, w, b, rm, rv, kCPU), gpu = make_run(x, w, b, rm, rv, kCuda);
        forward_backward(cpu, training, gy);
        forward_backward(gpu, training, gy);
        expect_matches(gpu.y, cpu.y, tol, what + " y");
        expect_matches(gpu.dx, cpu.dx, tol, what + " dx");
        expect_matches(gpu.dw, cpu.dw, tol, what + " dweight");
        expect_matches(gpu.db, cpu.db, tol, what + " dbias");
        expect_matches(gpu.rm, cpu.rm, tol, what + " running_mean");
        expect_matches(gpu.rv, cpu.rv, tol, what + " running_var");
      }
    }
  }
}

TEST(BatchNormCuda, F64AndNoAffineMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const Shape shape = {6, 4, 5, 3};
  const Tensor x = random_cpu(shape, -2, 2, DType::f64, 100);
  const Tensor gy = random_cpu(shape, -1, 1, DType::f64, 101);
  Tensor xc = x.detach().requires_grad_(true), xg = x.to(kCuda).detach().requires_grad_(true);
  const Tensor yc = batch_norm(xc, Tensor(), Tensor(), Tensor(), Tensor(), true);
  const Tensor yg = batch_norm(xg, Tensor(), Tensor(), Tensor(), Tensor(), true);
  yc.backward(gy);
  yg.backward(gy.to(kCuda));
  expect_matches(yg, yc, {1e-12, 1e-12}, "f64 y");
  expect_matches(xg.grad(), xc.grad(), {1e-12, 1e-12}, "f64 dx");
}

TEST(BatchNormCuda, RepeatedRunsAreBitIdentical) {
  KILN_SKIP_WITHOUT_CUDA();
  const Shape shape = {32, 8, 14, 14};
  const Tensor x = random_cpu(shape, -1, 3, DType::f32, 200).to(kCuda);
  const Tensor gy = random_cpu(shape, -1, 1, DType::f32, 201).to(kCuda);
  std::vector<std::vector<double>> first;
  for (int run = 0; run < 3; ++run) {
    Tensor xr = x.detach().requires_grad_(true);
    Tensor w = ones({8}, {.device = kCuda}).requires_grad_(true);
    Tensor rm = zeros({8}, {.device = kCuda}), rv = ones({8}, {.device = kCuda});
    const Tensor y = batch_norm(xr, w, Tensor(), rm, rv, true);
    y.backward(gy);
    const std::vector<std::vector<double>> now = {
        y.cpu().to_vector<double>(), xr.grad().cpu().to_vector<double>(),
        w.grad().cpu().to_vector<double>(), rm.cpu().to_vector<double>(), rv.cpu().to_vector<double>()};
    if (run == 0) first = now;
    else EXPECT_EQ(now, first) << "run " << run;
  }
}

TEST(BatchNormCuda, ModuleTrainsOnTheGpu) {
  KILN_SKIP_WITHOUT_CUDA();
  nn::BatchNorm2d cpu(3), gpu(3);
  gpu.to(kCuda);
  ASSERT_TRUE(gpu.running_mean.is_cuda());
  ASSERT_TRUE(gpu.num_batches_tracked.is_cuda());
  for (uint64_t step = 0; step < 2; ++step) {
    const Tensor x = random_cpu({4, 3, 6, 6}, 0, 2, DType::f32, 300 + step);
    expect_matches(gpu(x.to(kCuda)), cpu(x), tolerance(DType::f32), "train step");
  }
  EXPECT_EQ(gpu.num_batches_tracked.item<int64_t>(), 2);
  expect_matches(gpu.running_mean, cpu.running_mean, tolerance(DType::f32), "running_mean");
  expect_matches(gpu.running_var, cpu.running_var, tolerance(DType::f32), "running_var");
  cpu.eval();
  gpu.eval();
  const Tensor x = random_cpu({2, 3, 5, 5}, 0, 2, DType::f32, 400);
  expect_matches(gpu(x.to(kCuda)), cpu(x), tolerance(DType::f32), "eval");
}

}  // namespace
}  // namespace kiln
