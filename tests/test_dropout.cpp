// dropout and nn::Dropout on the CPU: the mask is exactly the f32 rand() draw compared with p
// (for one generator state), the dropped fraction is p within 5 sigma over 1e6 elements, kept
// elements are scaled by 1 / (1 - p), the gradient is the same mask times the same scale (by
// formula, and by finite differences with a generator re-seeded inside the function), one seed
// gives one mask, and the p = 0, p = 1, eval and error cases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/dropout.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using testing::rand_input;

// x filled with values in [1, 2), so a kept element is never 0.
Tensor nonzero_input(const Shape& shape, DType dtype, uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  return add(rand(shape, {.dtype = DType::f32}, &gen), 1.0).to(dtype);
}

TEST(Dropout, MaskIsTheRandDrawBelowP) {
  const Shape shape = {37, 29};  // 1073 elements: not a multiple of the 4 per Philox block
  for (double p : {0.1, 0.5, 0.77}) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      const Tensor x = nonzero_input(shape, dtype, 3);
      Generator gen(1234), same(1234);
      gen.advance(10);  // any state: the mask follows (seed, offset)
      same.advance(10);
      const Tensor y = dropout(x, p, /*training=*/true, &gen);
      const std::vector<double> u = rand(shape, {.dtype = DType::f32}, &same).to_vector<double>();
      EXPECT_EQ(gen.offset(), same.offset()) << "dropout advances the generator as rand() does";
      ASSERT_EQ(y.dtype(), dtype);
      const std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>();
      // The kept value, computed as the kernel states it: x times the scale, in opmath_t.
      const float scale32 = static_cast<float>(1.0 / (1.0 - p));
      for (size_t i = 0; i < u.size(); ++i) {
        double want = 0;
        if (!(u[i] < p)) {
          want = dtype == DType::f64 ? xv[i] * (1.0 / (1.0 - p))
                                     : static_cast<double>(static_cast<float>(xv[i]) * scale32);
          if (dtype == DType::bf16) want = from_vector(std::vector<double>{want}, {1}, {.dtype = dtype}).item();
        }
        ASSERT_EQ(yv[i], want) << "p " << p << " " << dtype_name(dtype) << " element " << i
                               << " (u = " << u[i] << ")";
      }
    }
  }
}

TEST(Dropout, DroppedFractionIsPWithinFiveSigma) {
  const int64_t n = 1000000;
  const Tensor x = ones({n});
  for (double p : {0.1, 0.5, 0.9}) {
    Generator gen(static_cast<uint64_t>(p * 100));
    const std::vector<double> y = dropout(x, p, true, &gen).to_vector<double>();
    int64_t dropped = 0;
    double total = 0;
    for (double v : y) {
      dropped += v == 0;
      total += v;
    }
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(static_cast<double>(dropped) / n, p, 5 * sigma) << "p " << p;
    // Inverted dropout keeps the expected value: mean(y) = (kept / n) / (1 - p) ~ 1, whose
    // standard deviation is sigma / (1 - p).
    EXPECT_NEAR(total / n, 1.0, 5 * sigma / (1 - p)) << "p " << p;
  }
}

TEST(Dropout, OneSeedOneMask) {
  const Tensor x = nonzero_input({1000}, DType::f32, 5);
  Generator a(42), b(42), c(43);
  const std::vector<double> ya = dropout(x, 0.5, true, &a).to_vector<double>();
  EXPECT_EQ(ya, dropout(x, 0.5, true, &b).to_vector<double>());
  EXPECT_NE(ya, dropout(x, 0.5, true, &c).to_vector<double>());
  EXPECT_NE(ya, dropout(x, 0.5, true, &a).to_vector<double>()) << "the next draw is a new mask";
  // The default generator, re-seeded.
  manual_seed(7);
  const std::vector<double> d1 = dropout(x, 0.5, true).to_vector<double>();
  manual_seed(7);
  EXPECT_EQ(d1, dropout(x, 0.5, true).to_vector<double>());
}

TEST(Dropout, NonContiguousInputUsesRowMajorElementOrder) {
  const Tensor base = nonzero_input({6, 9}, DType::f32, 6);
  const Tensor xt = base.t();  // [9, 6]
  Generator a(9), b(9);
  EXPECT_EQ(dropout(xt, 0.4, true, &a).to_vector<double>(),
            dropout(xt.contiguous(), 0.4, true, &b).to_vector<double>());
}

TEST(DropoutGrad, GradientIsTheMaskTimesTheScale) {
  const double p = 0.3;
  Tensor x = nonzero_input({50, 7}, DType::f32, 7).detach().requires_grad_(true);
  const Tensor g = nonzero_input({50, 7}, DType::f32, 8);
  Generator gen(11);
  const Tensor y = dropout(x, p, true, &gen);
  y.backward(g);
  const std::vector<double> yv = y.to_vector<double>(), gv = g.to_vector<double>();
  const std::vector<double> dx = x.grad().to_vector<double>();
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  int64_t kept = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    const double want = yv[i] == 0 ? 0.0 : static_cast<double>(static_cast<float>(gv[i]) * scale);
    EXPECT_EQ(dx[i], want) << i;
    kept += yv[i] != 0;
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, static_cast<int64_t>(yv.size()));
}

TEST(DropoutGrad, Gradcheck) {
  // Each evaluation re-seeds its own generator, so every evaluation uses the same mask.
  const Tensor x = rand_input({6, 5}, -1, 1, 21);
  for (double p : {0.2, 0.6}) {
    EXPECT_GRADCHECK([p](auto& in) {
      Generator gen(5);
      return dropout(in[0], p, true, &gen);
    }, {x});
  }
  EXPECT_GRADCHECK([](auto& in) {
    Generator gen(6);
    return dropout(in[0].t(), 0.5, true, &gen);
  }, {x});
}

TEST(Dropout, EvalAndPZeroAreTheIdentityAndPOneGivesZeros) {
  Tensor x = nonzero_input({4, 5}, DType::f32, 9).detach().requires_grad_(true);
  Generator gen(1);
  EXPECT_EQ(dropout(x, 0.5, /*training=*/false, &gen).to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(dropout(x, 0.0, true, &gen).to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(gen.offset(), 0u) << "no draw when nothing is dropped";
  const Tensor y = dropout(x, 1.0, true, &gen);
  EXPECT_EQ(y.to_vector<double>(), std::vector<double>(20, 0.0));
  sum(y).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>(20, 0.0));
}

TEST(Dropout, Errors) {
  const Tensor x = ones({3});
  EXPECT_THROW(dropout(x, -0.1, true), Error);
  EXPECT_THROW(dropout(x, 1.5, true), Error);
  EXPECT_THROW(dropout(x, std::numeric_limits<double>::quiet_NaN(), true), Error);
  EXPECT_THROW(dropout(zeros({3}, {.dtype = DType::i64}), 0.5, true), Error);
}

TEST(DropoutModule, TrainDropsEvalPassesThrough) {
  nn::Dropout drop(0.25);
  EXPECT_EQ(drop.repr(), "Dropout(p=0.25)");
  EXPECT_TRUE(drop.state_dict().empty());
  const Tensor x = nonzero_input({400}, DType::f32, 10);
  manual_seed(3);
  const Tensor y = drop(x);
  manual_seed(3);
  EXPECT_EQ(y.to_vector<double>(), dropout(x, 0.25, true).to_vector<double>());
  drop.eval();
  EXPECT_EQ(drop(x).to_vector<double>(), x.to_vector<double>());
  EXPECT_THROW(nn::Dropout(1.5), Error);
  EXPECT_THROW(nn::Dropout(-1), Error);
}

}  // namespace
}  // namespace kiln
