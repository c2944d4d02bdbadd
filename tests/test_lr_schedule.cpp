// The learning-rate schedules (constant, step, cosine with warmup, OneCycle) at their key
// steps, derived by hand; applying one keeps the ratios between param groups; bad options
// fail clearly. (OneCycleLR against PyTorch is in test_optim_parity.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "optim/lr_schedule.h"
#include "optim/sgd.h"
#include "tests/expect_error.h"
#include "tests/optim_testing.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::param_of;

TEST(LRSchedule, ConstantAndStep) {
  auto constant = make_lr_schedule("constant", {.lr = 0.3});
  EXPECT_EQ(constant->lr_at(0), 0.3);
  EXPECT_EQ(constant->lr_at(123456), 0.3);
  // lr * gamma^floor(step / 3)
  auto step = make_lr_schedule("step", {.lr = 1.0, .step_size = 3, .gamma = 0.5});
  EXPECT_EQ(step->lr_at(0), 1.0);
  EXPECT_EQ(step->lr_at(2), 1.0);
  EXPECT_EQ(step->lr_at(3), 0.5);
  EXPECT_EQ(step->lr_at(8), 0.25);
  EXPECT_EQ(step->lr_at(9), 0.125);
}

TEST(LRSchedule, CosineWithWarmup) {
  auto s = make_lr_schedule("cosine",
                            {.lr = 1.0, .total_steps = 110, .warmup_steps = 10, .min_lr = 0.1});
  EXPECT_DOUBLE_EQ(s->lr_at(0), 0.1);   // 1 * (0 + 1) / 10
  EXPECT_DOUBLE_EQ(s->lr_at(4), 0.5);   // 1 * 5 / 10
  EXPECT_DOUBLE_EQ(s->lr_at(9), 1.0);   // warmup ends at the full lr
  EXPECT_DOUBLE_EQ(s->lr_at(10), 1.0);  // decay ratio 0: cos(0) = 1
  EXPECT_DOUBLE_EQ(s->lr_at(35),
                   0.1 + 0.5 * (1 + std::cos(std::numbers::pi / 4)) * 0.9);  // ratio 1/4
  EXPECT_DOUBLE_EQ(s->lr_at(60), 0.55);     // midpoint of the decay: (1 + 0.1) / 2
  EXPECT_NEAR(s->lr_at(110), 0.1, 1e-15);   // ratio 1: min_lr
  EXPECT_NEAR(s->lr_at(1000), 0.1, 1e-15);  // and after
  auto no_warmup = make_lr_schedule("cosine", {.lr = 2.0, .total_steps = 4});
  EXPECT_DOUBLE_EQ(no_warmup->lr_at(0), 2.0);
  EXPECT_DOUBLE_EQ(no_warmup->lr_at(2), 1.0);  // cos(pi/2) = 0: half way to min_lr 0
}

TEST(LRSchedule, OneCycleKeySteps) {
  // max_lr 0.1, 100 steps: starts at 0.1/25 = 0.004, peaks at step 0.3*100 - 1 = 29, ends at
  // 0.004 / 1e4 = 4e-7 on step 99. Half way up (step 14.5) is not a step; step 64 is half way
  // down: pct (64 - 29) / 70 = 0.5, lr = (0.1 + 4e-7) / 2.
  auto s = make_lr_schedule("onecycle", {.lr = 0.1, .total_steps = 100});
  EXPECT_DOUBLE_EQ(s->lr_at(0), 0.004);
  EXPECT_DOUBLE_EQ(s->lr_at(29), 0.1);
  EXPECT_DOUBLE_EQ(s->lr_at(64), (0.1 + 4e-7) / 2);
  EXPECT_DOUBLE_EQ(s->lr_at(99), 4e-7);
  EXPECT_DOUBLE_EQ(s->lr_at(500), 4e-7);
}

TEST(LRSchedule, ApplyKeepsGroupRatios) {
  Tensor a = param_of({1.0}, {1}), b = param_of({1.0}, {1});
  SGD opt({{.params = {a}}, {.params = {b}, .lr = 0.05}}, {.lr = 0.1});
  auto s = make_lr_schedule("step", {.lr = 0.1, .step_size = 1, .gamma = 0.5});
  apply_lr_schedule(opt, *s, 2);
  EXPECT_EQ(*opt.param_groups()[0].lr, 0.025);
  EXPECT_EQ(*opt.param_groups()[1].lr, 0.0125);
}

TEST(LRSchedule, RejectsBadOptions) {
  expect_error([] { make_lr_schedule("cosine", {.total_steps = 10, .warmup_steps = 11}); },
               "warmup_steps must be in [0, total_steps = 10], got 11");
  expect_error([] { make_lr_schedule("cosine", {}); }, "total_steps must be >= 1");
  expect_error([] { make_lr_schedule("onecycle", {.total_steps = 10, .pct_start = 1.5}); },
               "pct_start");
  expect_error([] { make_lr_schedule("step", {.step_size = 0}); }, "step_size must be >= 1");
  expect_error([] { make_lr_schedule("constant", {})->lr_at(-1); }, "step must be >= 0, got -1");
}

}  // namespace
}  // namespace kiln
