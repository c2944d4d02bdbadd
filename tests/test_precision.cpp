// Autocast (core/autocast.h) through matmul and bmm on the CPU: results take the autocast
// dtype, f32 leaves still get f32 gradients that match an explicit-cast reference, f64 is left
// alone, the guard nests and restores, and an MLP trained under bf16 autocast follows the f32
// run closely.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "nn/linear.h"
#include "optim/adam.h"
#include "optim/param_groups.h"
#include "tests/expect_error.h"

namespace kiln {
namespace {

Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::f32) {
  Generator gen(seed);
  return randn(shape, {.dtype = dtype}, &gen);
}

TEST(Autocast, OffByDefaultGuardNestsAndRestores) {
  EXPECT_FALSE(autocast_enabled());
  {
    AutocastGuard bf16(DType::bf16);
    EXPECT_TRUE(autocast_enabled());
    EXPECT_EQ(autocast_dtype(), DType::bf16);
    {
      AutocastGuard f16(DType::f16);
      EXPECT_EQ(autocast_dtype(), DType::f16);
      {
        AutocastGuard off(DType::f16, /*enabled=*/false);
        EXPECT_FALSE(autocast_enabled());
      }
      EXPECT_TRUE(autocast_enabled());
      EXPECT_EQ(autocast_dtype(), DType::f16);
    }
    EXPECT_EQ(autocast_dtype(), DType::bf16);
  }
  EXPECT_FALSE(autocast_enabled());
  testing::expect_error([] { AutocastGuard g(DType::f64); }, {"autocast", "f64"});
}

TEST(Autocast, MatmulAndBmmReturnTheAutocastDtype) {
  const Tensor a = random({4, 8}, 1), b = random({8, 3}, 2);
  const Tensor a3 = random({2, 4, 8}, 3), b3 = random({2, 8, 3}, 4);
  for (DType dt : {DType::bf16, DType::f16}) {
    AutocastGuard guard(dt);
    EXPECT_EQ(matmul(a, b).dtype(), dt);
    EXPECT_EQ(matmul(a3, b).dtype(), dt);  // the folded Linear-style case
    EXPECT_EQ(bmm(a3, b3).dtype(), dt);
    // Same numbers as casting by hand: autocast is only the cast.
    EXPECT_EQ(max_abs_diff(matmul(a, b), matmul(a.to(dt), b.to(dt))), 0.0);
    // Close to the f32 product (bf16 keeps 8 mantissa bits, f16 11; inputs ~N(0,1), K = 8).
    const double tol = dt == DType::bf16 ? 0.1 : 0.02;
    NoGradGuard no_grad;
    AutocastGuard off(dt, false);
    EXPECT_LT(max_abs_diff(matmul(a.to(dt), b.to(dt)).to(DType::f32), matmul(a, b)), tol);
  }
  EXPECT_EQ(matmul(a, b).dtype(), DType::f32);  // off again outside the guard
}

TEST(Autocast, F64IsUnaffected) {
  const Tensor a = random({4, 8}, 5, DType::f64), b = random({8, 3}, 6, DType::f64);
  AutocastGuard guard(DType::bf16);
  const Tensor y = matmul(a, b);
  EXPECT_EQ(y.dtype(), DType::f64);
  EXPECT_EQ(bmm(a.unsqueeze(0), b.unsqueeze(0)).dtype(), DType::f64);
  AutocastGuard off(DType::bf16, false);
  EXPECT_EQ(max_abs_diff(y, matmul(a, b)), 0.0);
}

TEST(Autocast, F32LeavesGetF32GradientsThroughTheCasts) {
  Tensor a = random({5, 7}, 7).requires_grad_();
  Tensor b = random({7, 3}, 8).requires_grad_();
  Tensor a3 = random({2, 5, 7}, 9).requires_grad_();
  Tensor b3 = random({2, 7, 3}, 10).requires_grad_();
  {
    AutocastGuard guard(DType::bf16);
    Tensor y = matmul(a, b);
    ASSERT_EQ(y.dtype(), DType::bf16);
    // The loss in f32, as the runner does (losses accumulate in f32).
    sum(y.to(DType::f32)).backward();
    Tensor z = bmm(a3, b3);
    ASSERT_EQ(z.dtype(), DType::bf16);
    sum(z.to(DType::f32)).backward();
  }
  for (const Tensor* t : {&a, &b, &a3, &b3}) {
    ASSERT_TRUE(t->grad().defined());
    EXPECT_EQ(t->grad().dtype(), DType::f32);
    EXPECT_EQ(t->grad().shape(), t->shape());
  }
  // d sum(a@b)/da = ones @ b^T: the reference from explicit bf16 casts without autocast.
  Tensor ra = a.detach().requires_grad_(), rb = b.detach().requires_grad_();
  sum(matmul(ra.to(DType::bf16), rb.to(DType::bf16)).to(DType::f32)).backward();
  EXPECT_EQ(max_abs_diff(a.grad(), ra.grad()), 0.0);
  EXPECT_EQ(max_abs_diff(b.grad(), rb.grad()), 0.0);
  // And loosely the exact f32 gradient: each entry sums 3 (or 5) products of bf16 values.
  EXPECT_LT(max_abs_diff(a.grad(), matmul(ones({5, 3}), b.detach().t())), 0.1);
}

// A 2-layer MLP on a fixed synthetic classification task, trained twice from the same
// initialisation: once in f32, once with its matmuls under bf16 autocast. Returns the loss
// after each step.
std::vector<double> train_mlp(bool bf16, int steps) {
  Generator gen(42);
  nn::Sequential mlp;
  mlp.add(std::make_shared<nn::Linear>(16, 64, true, &gen));
  mlp.add(std::make_shared<nn::ReLU>());
  mlp.add(std::make_shared<nn::Linear>(64, 4, true, &gen));
  // Targets from a fixed random linear teacher, so the task is learnable.
  const Tensor x = randn({256, 16}, {}, &gen);
  const Tensor teacher = randn({16, 4}, {}, &gen);
  const Tensor y = argmax(matmul(x, teacher), 1);
  AdamW opt(make_param_groups(mlp.named_parameters(), 0.0), {.lr = 1e-2});
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) {
    Tensor loss;
    {
      AutocastGuard guard(DType::bf16, bf16);
      loss = cross_entropy(mlp(x).to(DType::f32), y);
    }
    loss.backward();
    for (const Tensor& p : mlp.parameters()) EXPECT_EQ(p.grad().dtype(), DType::f32);
    opt.step();
    opt.zero_grad();
    losses.push_back(loss.item());
  }
  return losses;
}

TEST(Autocast, Bf16MlpTrainingTracksF32) {
  const int steps = 60;
  const std::vector<double> f32 = train_mlp(false, steps), bf16 = train_mlp(true, steps);
  // Same start (up to the rounding of one forward pass), both fall a lot...
  EXPECT_NEAR(bf16.front(), f32.front(), 0.02 * f32.front());
  EXPECT_LT(f32.back(), 0.3 * f32.front());
  EXPECT_LT(bf16.back(), 0.3 * bf16.front());
  // ...and along the way bf16 stays within 10% of f32 (plus 0.02 absolute, for when the
  // loss gets small): bf16 rounding perturbs the path, it does not change where it goes.
  for (int s = 0; s < steps; ++s)
    EXPECT_NEAR(bf16[s], f32[s], 0.1 * f32[s] + 0.02) << "step " << s;
  // Not trivially identical: the bf16 run really rounded.
  EXPECT_NE(bf16.back(), f32.back());
}

}  // namespace
}  // namespace kiln
