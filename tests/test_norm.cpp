// batch_norm and nn::BatchNorm1d/2d on the CPU: outputs in training and eval mode against a
// naive per-channel computation written out here, running statistics after two steps against
// the update formula (and one small case worked by hand), gradients by finite differences in
// f64 (training and eval, [N, C] and [N, C, H, W], with and without affine parameters), the
// modules' buffers, counters and errors, and parity of BatchNorm2d with Debian's PyTorch 1.13
// (forward, backward and running statistics, in f64 and f32).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/batchnorm.h"
#include "tests/gradcheck.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::gradcheck;
using testing::rand_input;
using testing::uniform_values;

Tensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f32) {
  return from_vector(v, shape, {.dtype = dtype});
}

// ---------------------------------------------------------------- the naive reference
// Channel c of a row-major [N, C, inner...] array: the values at (n, c, k) for all n, k.
struct Layout {
  int64_t n, channels, inner;
  explicit Layout(const Shape& s) : n(s[0]), channels(s[1]), inner(1) {
    for (size_t d = 2; d < s.size(); ++d) inner *= s[d];
  }
  int64_t at(int64_t i, int64_t c, int64_t k) const { return (i * channels + c) * inner + k; }
};

struct ChannelStats {
  std::vector<double> mean, var;  // var is the biased one (divided by the count)
};

ChannelStats naive_stats(const std::vector<double>& x, const Shape& shape) {
  const Layout l(shape);
  const double count = static_cast<double>(l.n * l.inner);
  ChannelStats s{std::vector<double>(l.channels, 0.0), std::vector<double>(l.channels, 0.0)};
  for (int64_t c = 0; c < l.channels; ++c) {
    for (int64_t i = 0; i < l.n; ++i)
      for (int64_t k = 0; k < l.inner; ++k) s.mean[c] += x[l.at(i, c, k)];
    s.mean[c] /= count;
    for (int64_t i = 0; i < l.n; ++i)
      for (int64_t k = 0; k < l.inner; ++k) s.var[c] += std::pow(x[l.at(i, c, k)] - s.mean[c], 2);
    s.var[c] /= count;
  }
  return s;
}

// y = (x - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c]; empty w / b mean 1 / 0.
std::vector<double> naive_normalise(const std::vector<double>& x, const Shape& shape,
                                    const std::vector<double>& mean, const std::vector<double>& var,
                                    const std::vector<double>& w, const std::vector<double>& b,
                                    double eps) {
  const Layout l(shape);
  std::vector<double> y(x.size());
  for (int64_t i = 0; i < l.n; ++i)
    for (int64_t c = 0; c < l.channels; ++c)
      for (int64_t k = 0; k < l.inner; ++k) {
        const int64_t j = l.at(i, c, k);
        y[j] = (x[j] - mean[c]) / std::sqrt(var[c] + eps) * (w.empty() ? 1.0 : w[c]) +
               (b.empty() ? 0.0 : b[c]);
      }
  return y;
}

void expect_values(const Tensor& got, const std::vector<double>& want, double tol,
                   const std::string& what) {
  const std::vector<double> g = got.to_vector<double>();
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i)
    EXPECT_NEAR(g[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << what << " element " << i;
}

// ---------------------------------------------------------------- forward
TEST(BatchNorm, TrainingForwardMatchesNaiveComputation) {
  for (const Shape& shape : {Shape{6, 4}, Shape{3, 4, 5}, Shape{2, 3, 4, 5}}) {
    const int64_t channels = shape[1];
    // A mean of 3 and a spread of 2, so centring matters.
    const std::vector<double> xv = uniform_values(shape_numel(shape), 1, 5, 1);
    const std::vector<double> wv = uniform_values(channels, 0.5, 1.5, 2);
    const std::vector<double> bv = uniform_values(channels, -1, 1, 3);
    for (DType dtype : {DType::f32, DType::f64}) {
      const Tensor x = tensor(xv, shape, dtype);
      const std::vector<double> xd = x.to_vector<double>();  // the values after rounding
      const ChannelStats s = naive_stats(xd, shape);
      const double tol = dtype == DType::f32 ? 2e-6 : 1e-12;
      const std::string what = std::string(dtype_name(dtype)) + " " + shape_str(shape);
      const Tensor y = batch_norm(x, tensor(wv, {channels}, dtype), tensor(bv, {channels}, dtype),
                                  Tensor(), Tensor(), /*training=*/true);
      EXPECT_EQ(y.dtype(), dtype) << what;
      EXPECT_EQ(y.shape(), shape) << what;
      expect_values(y, naive_normalise(xd, shape, s.mean, s.var, wv, bv, 1e-5), tol, what);
      // Without affine parameters; and a larger eps.
      expect_values(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 0.5),
                    naive_normalise(xd, shape, s.mean, s.var, {}, {}, 0.5), tol, what + " no affine");
    }
  }
}

TEST(BatchNorm, EvalForwardUsesRunningStatistics) {
  const Shape shape = {4, 3, 2, 2};
  const std::vector<double> xv = uniform_values(48, -2, 2, 4);
  const std::vector<double> rm = {0.5, -1.0, 2.0}, rv = {0.25, 1.0, 4.0};
  const std::vector<double> wv = {1.5, -0.5, 2.0}, bv = {0.1, 0.2, -0.3};
  for (DType dtype : {DType::f32, DType::f64}) {
    const Tensor x = tensor(xv, shape, dtype);
    Tensor running_mean = tensor(rm, {3}, dtype), running_var = tensor(rv, {3}, dtype);
    const Tensor y = batch_norm(x, tensor(wv, {3}, dtype), tensor(bv, {3}, dtype), running_mean,
                                running_var, /*training=*/false, 0.1, 1e-3);
    expect_values(y, naive_normalise(x.to_vector<double>(), shape, rm, rv, wv, bv, 1e-3),
                  dtype == DType::f32 ? 2e-6 : 1e-12, dtype_name(dtype).data());
    // Eval leaves the running statistics alone.
    EXPECT_EQ(running_mean.to_vector<double>(), tensor(rm, {3}, dtype).to_vector<double>());
    EXPECT_EQ(running_var.to_vector<double>(), tensor(rv, {3}, dtype).to_vector<double>());
  }
}

TEST(BatchNorm, Bf16ComputesInF32) {
  const Shape shape = {8, 3, 4};
  const Tensor x = tensor(uniform_values(96, -3, 3, 5), shape, DType::bf16);
  const std::vector<double> w = {0.5, 1, 2}, b = {0, 1, -1};
  const Tensor y = batch_norm(x, tensor(w, {3}), tensor(b, {3}), Tensor(), Tensor(), true);
  EXPECT_EQ(y.dtype(), DType::bf16);
  const std::vector<double> xd = x.to_vector<double>();
  const ChannelStats s = naive_stats(xd, shape);
  const std::vector<double> want = naive_normalise(xd, shape, s.mean, s.var, w, b, 1e-5);
  const std::vector<double> got = y.to_vector<double>();
  // One bf16 rounding of the f32 result: half an ulp, at most 2^-8 relative (8 significant
  // bits), plus a little for the f32 arithmetic before it.
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 0x1p-8 * std::abs(want[i]) + 1e-6) << i;
}

// ---------------------------------------------------------------- running statistics
TEST(BatchNorm, RunningStatisticsWorkedByHand) {
  // One channel, momentum 0.1, starting from mean 0 and variance 1.
  // Step 1: x = {1, 3}: mean 2, biased variance 1, unbiased 2.
  //   running_mean = 0.9 * 0 + 0.1 * 2 = 0.2;  running_var = 0.9 * 1 + 0.1 * 2 = 1.1;
  //   y = (x - 2) / sqrt(1 + 1e-5) = -+0.999995000037...
  // Step 2: x = {0, 4}: mean 2, biased variance 4, unbiased 8.
  //   running_mean = 0.9 * 0.2 + 0.1 * 2 = 0.38;  running_var = 0.9 * 1.1 + 0.1 * 8 = 1.79.
  Tensor rm = tensor({0}, {1}, DType::f64), rv = tensor({1}, {1}, DType::f64);
  const Tensor y1 = batch_norm(tensor({1, 3}, {2, 1}, DType::f64), Tensor(), Tensor(), rm, rv, true);
  EXPECT_NEAR(rm.item(), 0.2, 1e-15);
  EXPECT_NEAR(rv.item(), 1.1, 1e-15);
  EXPECT_NEAR(y1.to_vector<double>()[0], -1 / std::sqrt(1 + 1e-5), 1e-15);
  EXPECT_NEAR(y1.to_vector<double>()[1], 1 / std::sqrt(1 + 1e-5), 1e-15);
  batch_norm(tensor({0, 4}, {2, 1}, DType::f64), Tensor(), Tensor(), rm, rv, true);
  EXPECT_NEAR(rm.item(), 0.38, 1e-15);
  EXPECT_NEAR(rv.item(), 1.79, 1e-15);
}

TEST(BatchNorm, RunningStatisticsAfterTwoStepsFollowTheUpdateFormula) {
  const Shape shape = {5, 3, 2, 3};
  const int64_t count = 5 * 2 * 3;
  const double momentum = 0.3;
  for (DType dtype : {DType::f32, DType::f64}) {
    std::vector<double> rm = {0.5, -0.5, 0}, rv = {2, 1, 0.5};
    Tensor running_mean = tensor(rm, {3}, dtype), running_var = tensor(rv, {3}, dtype);
    rm = running_mean.to_vector<double>();
    rv = running_var.to_vector<double>();
    for (uint32_t step = 0; step < 2; ++step) {
      const Tensor x = tensor(uniform_values(shape_numel(shape), -1, 3, 10 + step), shape, dtype);
      batch_norm(x, Tensor(), Tensor(), running_mean, running_var, true, momentum);
      const ChannelStats s = naive_stats(x.to_vector<double>(), shape);
      for (int64_t c = 0; c < 3; ++c) {
        rm[c] = (1 - momentum) * rm[c] + momentum * s.mean[c];
        rv[c] = (1 - momentum) * rv[c] + momentum * s.var[c] * count / (count - 1);  // unbiased
      }
    }
    const double tol = dtype == DType::f32 ? 1e-6 : 1e-14;
    expect_values(running_mean, rm, tol, std::string("running_mean ") + dtype_name(dtype).data());
    expect_values(running_var, rv, tol, std::string("running_var ") + dtype_name(dtype).data());
  }
}

// ---------------------------------------------------------------- gradients
TEST(BatchNormGrad, GradcheckTraining) {
  const Tensor w = rand_input({3}, 0.5, 1.5, 41), b = rand_input({3}, -1, 1, 42);
  for (const Shape& shape : {Shape{5, 3}, Shape{2, 3, 3, 2}}) {
    const Tensor x = rand_input(shape, -1, 2, 43);
    EXPECT_GRADCHECK([](auto& in) { return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true); },
                     {x, w, b});
    EXPECT_GRADCHECK([](auto& in) { return batch_norm(in[0], Tensor(), Tensor(), Tensor(), Tensor(), true); },
                     {x});
    // Running statistics change in place at every call but do not enter the output.
    Tensor rm = zeros({3}, {.dtype = DType::f64}), rv = ones({3}, {.dtype = DType::f64});
    EXPECT_GRADCHECK([&](auto& in) { return batch_norm(in[0], in[1], in[2], rm, rv, true, 0.1, 1e-3); },
                     {x, w, b});
  }
  // Non-contiguous input: a transposed [C, N].
  const Tensor xt = rand_input({3, 6}, -1, 1, 44);
  EXPECT_GRADCHECK([](auto& in) { return batch_norm(in[0].t(), in[1], in[2], Tensor(), Tensor(), true); },
                   {xt, w, b});
}

TEST(BatchNormGrad, GradcheckEval) {
  const Tensor w = rand_input({3}, 0.5, 1.5, 51), b = rand_input({3}, -1, 1, 52);
  const Tensor rm = tensor({0.2, -0.3, 0.5}, {3}, DType::f64);
  const Tensor rv = tensor({0.5, 1.5, 2.0}, {3}, DType::f64);
  for (const Shape& shape : {Shape{4, 3}, Shape{2, 3, 2, 3}}) {
    const Tensor x = rand_input(shape, -1, 1, 53);
    EXPECT_GRADCHECK([&](auto& in) { return batch_norm(in[0], in[1], in[2], rm, rv, false); }, {x, w, b});
    EXPECT_GRADCHECK([&](auto& in) { return batch_norm(in[0], Tensor(), Tensor(), rm, rv, false); }, {x});
  }
}

TEST(BatchNormGrad, EvalBackwardKeepsTheStatisticsOfItsForward) {
  // An eval forward, then a training step that updates the running statistics in place, then
  // the eval backward: it must use the statistics its forward saw (dx = g * w / sqrt(rv + eps)).
  Tensor rm = tensor({1.0}, {1}, DType::f64), rv = tensor({3.0}, {1}, DType::f64);
  Tensor w = tensor({2.0}, {1}, DType::f64).requires_grad_(true);
  Tensor x = tensor({0.5, 1.5, 2.5}, {3, 1}, DType::f64).requires_grad_(true);
  const Tensor y = batch_norm(x, w, Tensor(), rm, rv, false, 0.1, 1.0);
  batch_norm(tensor({7, 9}, {2, 1}, DType::f64), Tensor(), Tensor(), rm, rv, true);
  ASSERT_NE(rm.item(), 1.0);
  y.backward(ones({3, 1}, {.dtype = DType::f64}));
  // dx = 2 / sqrt(3 + 1) = 1; dw = sum((x - 1) / 2) = (-0.5 + 0.5 + 1.5) / 2 = 0.75.
  for (double g : x.grad().to_vector<double>()) EXPECT_DOUBLE_EQ(g, 1.0);
  EXPECT_DOUBLE_EQ(w.grad().item(), 0.75);
}

TEST(BatchNormGrad, GradientsKeepTheParameterDtypes) {
  Tensor x = tensor(uniform_values(24, -1, 1, 60), {4, 3, 2}, DType::bf16).requires_grad_(true);
  Tensor w = ones({3}).requires_grad_(true), b = zeros({3}).requires_grad_(true);  // f32
  sum(batch_norm(x, w, b, Tensor(), Tensor(), true)).backward();
  EXPECT_EQ(x.grad().dtype(), DType::bf16);
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  EXPECT_EQ(b.grad().dtype(), DType::f32);
  // d/db sum(y) = the count per channel; d/dx sum(y) = 0 (the mean absorbs a shift).
  EXPECT_EQ(b.grad().to_vector<double>(), std::vector<double>({8, 8, 8}));
  for (double g : x.grad().to_vector<double>()) EXPECT_NEAR(g, 0.0, 1e-2);
}

// ---------------------------------------------------------------- errors
TEST(BatchNorm, ArgumentErrors) {
  const Tensor x = zeros({4, 3});
  const Tensor c3 = ones({3});
  EXPECT_THROW(batch_norm(zeros({4}), Tensor(), Tensor(), Tensor(), Tensor(), true), Error);
  EXPECT_THROW(batch_norm(x, ones({4}), Tensor(), Tensor(), Tensor(), true), Error);  // channels
  EXPECT_THROW(batch_norm(x, Tensor(), ones({3, 1}), Tensor(), Tensor(), true), Error);
  EXPECT_THROW(batch_norm(x, Tensor(), Tensor(), c3, Tensor(), true), Error);  // half the stats
  EXPECT_THROW(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), false), Error);  // eval, none
  EXPECT_THROW(batch_norm(zeros({1, 3}), Tensor(), Tensor(), Tensor(), Tensor(), true), Error);
  EXPECT_THROW(batch_norm(zeros({4, 3}, {.dtype = DType::i64}), Tensor(), Tensor(), Tensor(), Tensor(), true),
               Error);
  EXPECT_THROW(batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, -1.0), Error);
  // One value per channel is fine in eval mode.
  EXPECT_NO_THROW(batch_norm(zeros({1, 3}), Tensor(), Tensor(), zeros({3}), c3, false));
  try {
    batch_norm(x, ones({5}), Tensor(), Tensor(), Tensor(), true);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("weight f32[5]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("3 channels"), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------- modules
std::vector<std::string> names(const nn::NamedTensors& ts) {
  std::vector<std::string> out;
  for (const auto& [name, t] : ts) out.push_back(name);
  return out;
}

TEST(BatchNormModule, StateDictKeysAndInitialValuesMatchPyTorch) {
  nn::BatchNorm2d bn(4);
  EXPECT_EQ(names(bn.state_dict()), (std::vector<std::string>{"weight", "bias", "running_mean",
                                                              "running_var", "num_batches_tracked"}));
  EXPECT_EQ(bn.weight.to_vector<double>(), std::vector<double>(4, 1.0));
  EXPECT_EQ(bn.bias.to_vector<double>(), std::vector<double>(4, 0.0));
  EXPECT_EQ(bn.running_mean.to_vector<double>(), std::vector<double>(4, 0.0));
  EXPECT_EQ(bn.running_var.to_vector<double>(), std::vector<double>(4, 1.0));
  EXPECT_EQ(bn.num_batches_tracked.dtype(), DType::i64);
  EXPECT_EQ(bn.num_batches_tracked.dim(), 0);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 0);
  EXPECT_TRUE(bn.weight.requires_grad());
  EXPECT_FALSE(bn.running_mean.requires_grad());
  EXPECT_EQ(bn.num_parameters(), 8);
  EXPECT_EQ(bn.repr(), "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=true, track_running_stats=true)");

  nn::BatchNorm1d plain(3, 1e-3, 0.2, /*affine=*/false, /*track_running_stats=*/false);
  EXPECT_TRUE(plain.state_dict().empty());
  EXPECT_FALSE(plain.weight.defined());
  EXPECT_FALSE(plain.running_mean.defined());
}

TEST(BatchNormModule, TrainingCountsBatchesAndEvalUsesRunningStatistics) {
  nn::BatchNorm1d bn(3, 1e-5, 0.5);
  const Tensor x1 = tensor(uniform_values(12, 0, 4, 70), {4, 3});
  const Tensor x2 = tensor(uniform_values(24, -2, 2, 71), {4, 3, 2});  // [N, C, L] too
  Tensor rm = zeros({3}), rv = ones({3});
  const Tensor y1 = bn(x1);
  expect_values(y1, batch_norm(x1, Tensor(), Tensor(), rm, rv, true, 0.5).to_vector<double>(), 0,
                "train step 1");
  bn(x2);
  batch_norm(x2, Tensor(), Tensor(), rm, rv, true, 0.5);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 2);
  EXPECT_EQ(bn.running_mean.to_vector<double>(), rm.to_vector<double>());
  EXPECT_EQ(bn.running_var.to_vector<double>(), rv.to_vector<double>());

  bn.eval();
  const Tensor before = bn.running_mean.clone();
  const Tensor ye = bn(x1);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 2);  // eval does not count
  EXPECT_EQ(bn.running_mean.to_vector<double>(), before.to_vector<double>());
  expect_values(ye, batch_norm(x1, Tensor(), Tensor(), rm, rv, false).to_vector<double>(), 0, "eval");
}

TEST(BatchNormModule, MomentumNoneIsTheCumulativeAverage) {
  // With momentum=None batch k is weighted 1/k, so after k batches the running mean is the plain
  // average of the k batch means (the initial 0 is weighted 1 - 1/1 = 0 at the first step).
  nn::BatchNorm1d bn(2, 1e-5, std::nullopt);
  std::vector<double> sum_means(2, 0.0);
  for (uint32_t k = 1; k <= 3; ++k) {
    const Tensor x = tensor(uniform_values(10, -1, 3, 80 + k), {5, 2}, DType::f32);
    bn(x);
    const ChannelStats s = naive_stats(x.to_vector<double>(), {5, 2});
    for (int c = 0; c < 2; ++c) sum_means[c] += s.mean[c];
  }
  expect_values(bn.running_mean, {sum_means[0] / 3, sum_means[1] / 3}, 1e-6, "cumulative mean");
  EXPECT_EQ(bn.repr(), "BatchNorm1d(2, eps=1e-05, momentum=None, affine=true, track_running_stats=true)");
}

TEST(BatchNormModule, WithoutRunningStatisticsEvalUsesTheBatch) {
  nn::BatchNorm2d bn(2, 1e-5, 0.1, true, /*track_running_stats=*/false);
  bn.eval();
  const Tensor x = tensor(uniform_values(16, 1, 5, 90), {2, 2, 2, 2});
  expect_values(bn(x), batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true).to_vector<double>(),
                0, "eval without running stats");
}

TEST(BatchNormModule, InputErrorsNameTheModule) {
  nn::BatchNorm1d bn1(3);
  nn::BatchNorm2d bn2(3);
  EXPECT_THROW(bn1(zeros({2, 3, 4, 5})), Error);
  EXPECT_THROW(bn1(zeros({3})), Error);
  EXPECT_THROW(bn2(zeros({2, 3, 4})), Error);
  EXPECT_THROW(bn2(zeros({2, 4, 5, 5})), Error);  // 4 channels, expected 3
  EXPECT_THROW(nn::BatchNorm2d(0), Error);
  EXPECT_THROW(nn::BatchNorm2d(3, 1e-5, 1.5), Error);
  try {
    bn2(zeros({2, 3, 4}));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("BatchNorm2d(3)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("f32[2, 3, 4]"), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------- parity with PyTorch
namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "the .bin files here are little-endian f64");

// The reference: BatchNorm2d(C, momentum=0.1) with the given weight and bias; a training step on
// x1, a training step on x2 whose output is back-propagated with gy, then an eval forward and
// backward on x1. Keep in step with RunKiln below.
const char* const kReferenceScript = R"PY(
import os, sys
import numpy as np
import torch

d = sys.argv[1]
N, C, H, W = (int(v) for v in sys.argv[2:6])
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

def load(name, shape):
    return torch.from_numpy(np.fromfile(os.path.join(d, name + ".bin"), dtype="<f8").reshape(shape))

def save(name, t):
    t.detach().to(torch.float64).numpy().astype("<f8").tofile(os.path.join(d, name + ".bin"))

x1, x2, gy = (load(n, (N, C, H, W)) for n in ("x1", "x2", "gy"))
w, b = load("w", (C,)), load("b", (C,))
for suffix, dtype in (("f64", torch.float64), ("f32", torch.float32)):
    bn = torch.nn.BatchNorm2d(C, eps=1e-5, momentum=0.1).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(w.to(dtype))
        bn.bias.copy_(b.to(dtype))
    bn.train()
    bn(x1.to(dtype))
    x = x2.to(dtype).detach().clone().requires_grad_()
    y = bn(x)
    (y * gy.to(dtype)).sum().backward()
    for name, t in (("y_train", y), ("dx_train", x.grad), ("dw_train", bn.weight.grad),
                    ("db_train", bn.bias.grad), ("running_mean", bn.running_mean),
                    ("running_var", bn.running_var),
                    ("num_batches_tracked", bn.num_batches_tracked)):
        save(name + "_" + suffix, t)
    bn.zero_grad()
    bn.eval()
    x = x1.to(dtype).detach().clone().requires_grad_()
    y = bn(x)
    (y * gy.to(dtype)).sum().backward()
    for name, t in (("y_eval", y), ("dx_eval", x.grad), ("dw_eval", bn.weight.grad),
                    ("db_eval", bn.bias.grad)):
        save(name + "_" + suffix, t)
)PY";

void write_f64(const fs::path& path, const Tensor& t) {
  const Tensor c = t.to(DType::f64).contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * 8));
  KILN_CHECK(out, "cannot write ", path.string());
}

std::vector<double> read_f64(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "cannot open ", path.string(), " (did the reference script write it?)");
  std::vector<double> v;
  double x;
  while (in.read(reinterpret_cast<char*>(&x), sizeof x)) v.push_back(x);
  return v;
}

// max |kiln - torch| over max |torch| <= tol. Keeps the worst such ratio in *worst_rel.
::testing::AssertionResult close_to(const std::string& what, const Tensor& kiln_value,
                                    const std::vector<double>& torch_value, double tol,
                                    double* worst_rel) {
  if (!kiln_value.defined()) return ::testing::AssertionFailure() << what << ": kiln has no value";
  const std::vector<double> a = kiln_value.to_vector<double>();
  if (a.size() != torch_value.size())
    return ::testing::AssertionFailure() << what << ": kiln has " << a.size() << " values, PyTorch "
                                         << torch_value.size();
  double scale = 0, worst = 0;
  size_t at = 0;
  for (double v : torch_value) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - torch_value[i]);
    if (!(d <= worst)) worst = d, at = i;  // NaN counts as worst
  }
  *worst_rel = std::max(*worst_rel, worst / std::max(scale, 1e-300));
  if (worst <= tol * std::max(scale, 1e-300)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": |kiln - PyTorch| = " << worst << " at element "
                                       << at << " (kiln " << a[at] << ", PyTorch " << torch_value[at]
                                       << "), more than " << tol << " x largest |PyTorch| " << scale;
}

class BatchNormParity : public ::testing::Test {
 protected:
  static constexpr int64_t N = 4, C = 3, H = 5, W = 6;

  static void SetUpTestSuite() {
    skip_ = testing::python_unavailable(testing::kSystemPython, "torch, numpy");
    if (!skip_.empty()) return;
    dir_ = testing::make_temp_dir("kiln_bn_parity_").string();
    if (dir_.empty()) {
      failure_ = "cannot make a directory under " + fs::temp_directory_path().string();
      return;
    }
    Generator gen(20240612);
    const TensorOptions f64{.dtype = DType::f64};
    inputs_ = {randn({N, C, H, W}, f64, &gen) * 2.0 + 0.5, randn({N, C, H, W}, f64, &gen) - 1.0,
               randn({N, C, H, W}, f64, &gen), rand({C}, f64, &gen) + 0.5, randn({C}, f64, &gen)};
    const char* names[] = {"x1", "x2", "gy", "w", "b"};
    for (size_t i = 0; i < inputs_.size(); ++i) write_f64(fs::path(dir_) / (std::string(names[i]) + ".bin"), inputs_[i]);
    const fs::path script = fs::path(dir_) / "batchnorm_reference.py";
    std::ofstream(script) << kReferenceScript;
    const testing::CommandResult ref = testing::run_command(
        testing::kSystemPython + " '" + script.string() + "' '" + dir_ + "' " + std::to_string(N) + " " +
        std::to_string(C) + " " + std::to_string(H) + " " + std::to_string(W) + " 2>&1");
    failure_ = ref.failure;
  }

  static void TearDownTestSuite() {
    inputs_.clear();
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  // The same steps as the reference script, on nn::BatchNorm2d with every tensor in `dtype`.
  void RunKiln(DType dtype, const std::string& suffix, double tol) {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_TRUE(failure_.empty()) << failure_;
    auto in = [&](int i) { return inputs_[i].to(dtype); };
    auto ref = [&](const std::string& name) { return read_f64(fs::path(dir_) / (name + "_" + suffix + ".bin")); };
    nn::BatchNorm2d bn(C, 1e-5, 0.1);
    {
      NoGradGuard no_grad;
      // set_data, as Module::to does for devices: the module's tensors become `dtype`.
      bn.weight.set_data(in(3).clone());
      bn.bias.set_data(in(4).clone());
      bn.running_mean.set_data(bn.running_mean.to(dtype));
      bn.running_var.set_data(bn.running_var.to(dtype));
    }
    double worst = 0;
    bn.train();
    bn(in(0));
    Tensor x = in(1).detach().requires_grad_(true);
    Tensor y = bn(x);
    y.backward(in(2));
    EXPECT_TRUE(close_to("y_train", y, ref("y_train"), tol, &worst));
    EXPECT_TRUE(close_to("dx_train", x.grad(), ref("dx_train"), tol, &worst));
    EXPECT_TRUE(close_to("dw_train", bn.weight.grad(), ref("dw_train"), tol, &worst));
    EXPECT_TRUE(close_to("db_train", bn.bias.grad(), ref("db_train"), tol, &worst));
    EXPECT_TRUE(close_to("running_mean", bn.running_mean, ref("running_mean"), tol, &worst));
    EXPECT_TRUE(close_to("running_var", bn.running_var, ref("running_var"), tol, &worst));
    EXPECT_TRUE(close_to("num_batches_tracked", bn.num_batches_tracked, ref("num_batches_tracked"), 0, &worst));

    bn.zero_grad();
    bn.eval();
    x = in(0).detach().requires_grad_(true);
    y = bn(x);
    y.backward(in(2));
    EXPECT_TRUE(close_to("y_eval", y, ref("y_eval"), tol, &worst));
    EXPECT_TRUE(close_to("dx_eval", x.grad(), ref("dx_eval"), tol, &worst));
    EXPECT_TRUE(close_to("dw_eval", bn.weight.grad(), ref("dw_eval"), tol, &worst));
    EXPECT_TRUE(close_to("db_eval", bn.bias.grad(), ref("db_eval"), tol, &worst));
    std::printf("kiln vs PyTorch BatchNorm2d (%s): worst relative error %.3g (tolerance %.0e)\n",
                suffix.c_str(), worst, tol);
  }

  static inline std::string skip_, failure_, dir_;
  static inline std::vector<Tensor> inputs_;
};

TEST_F(BatchNormParity, BatchNorm2dF64) { RunKiln(DType::f64, "f64", 1e-10); }

TEST_F(BatchNormParity, BatchNorm2dF32) { RunKiln(DType::f32, "f32", 1e-5); }

}  // namespace
}  // namespace kiln
