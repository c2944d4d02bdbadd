// GradScaler (optim/grad_scaler.h) against torch.cuda.amp.GradScaler's rules: unscale_ divides
// the gradients exactly, an inf/NaN gradient skips the step and halves the scale, the scale
// doubles after growth_interval clean steps, state survives a round trip, and on the CPU under
// f16 autocast it rescues gradients that f16 flushes to zero and backs off from overflow.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "optim/clip_grad.h"
#include "optim/grad_scaler.h"
#include "optim/sgd.h"
#include "tests/expect_error.h"

namespace kiln {
namespace {

using testing::expect_error;

// One parameter [4] with SGD lr 1 and a hand-set gradient.
struct OneParam {
  Tensor p = from_vector(std::vector<double>{1, 2, 3, 4}, {4}).requires_grad_();
  SGD opt{{ParamGroup{.params = {p}}}, {.lr = 1.0}};
  void set_grad(std::vector<double> g) { p.set_grad(from_vector(g, {4})); }
};

TEST(GradScaler, ScaleMultipliesTheLossAndUnscaleDividesGradientsExactly) {
  OneParam s;
  GradScaler scaler;  // 2^16
  EXPECT_EQ(scaler.get_scale(), 65536.0);
  const Tensor loss = scalar_tensor(0.25);
  EXPECT_EQ(scaler.scale(loss).item(), 0.25 * 65536.0);
  s.set_grad({65536.0, -131072.0, 3.0, 0.0});
  scaler.unscale_(s.opt);
  EXPECT_EQ(s.p.grad().to_vector<double>(), (std::vector<double>{1.0, -2.0, 3.0 / 65536.0, 0.0}));
  EXPECT_TRUE(scaler.step(s.opt));
  EXPECT_EQ(s.p.to_vector<double>(), (std::vector<double>{0.0, 4.0, 3.0 - 3.0 / 65536.0, 4.0}));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 65536.0);  // one clean step is not enough to grow
  expect_error([&] { scaler.update(); }, {"update", "step"});
}

TEST(GradScaler, OverflowSkipsTheStepAndHalvesTheScale) {
  for (double bad : {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    OneParam s;
    GradScaler scaler({.init_scale = 1024.0});
    s.set_grad({1.0, bad, 1.0, 1.0});
    EXPECT_FALSE(scaler.step(s.opt)) << bad;
    EXPECT_EQ(s.p.to_vector<double>(), (std::vector<double>{1, 2, 3, 4})) << "skipped step moved p";
    EXPECT_EQ(scaler.skipped_steps(), 1);
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), 512.0);
    EXPECT_EQ(scaler.state().growth_tracker, 0);
    // The next clean step goes through at the new scale.
    s.set_grad({512.0, 512.0, 512.0, 512.0});
    EXPECT_TRUE(scaler.step(s.opt));
    EXPECT_EQ(s.p.to_vector<double>(), (std::vector<double>{0, 1, 2, 3}));
    scaler.update();
  }
}

TEST(GradScaler, GrowsAfterGrowthIntervalCleanStepsInARow) {
  OneParam s;
  GradScaler scaler({.init_scale = 8.0, .growth_interval = 3});
  auto clean_step = [&] {
    s.set_grad({0, 0, 0, 0});
    EXPECT_TRUE(scaler.step(s.opt));
    scaler.update();
  };
  clean_step();
  clean_step();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  EXPECT_EQ(scaler.state().growth_tracker, 2);
  // An overflow restarts the count.
  s.set_grad({0, std::numeric_limits<double>::infinity(), 0, 0});
  EXPECT_FALSE(scaler.step(s.opt));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 4.0);
  clean_step();
  clean_step();
  EXPECT_EQ(scaler.get_scale(), 4.0);
  clean_step();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  EXPECT_EQ(scaler.state().growth_tracker, 0);
  // The default interval is PyTorch's: 2000.
  EXPECT_EQ(GradScalerOptions{}.growth_interval, 2000);
}

TEST(GradScaler, StateRoundTripContinuesTheSameWay) {
  OneParam s;
  GradScaler a({.init_scale = 256.0, .growth_interval = 4});
  for (int i = 0; i < 3; ++i) {
    s.set_grad({0, 0, 0, 0});
    a.step(s.opt);
    a.update();
  }
  const GradScalerState saved = a.state();
  EXPECT_EQ(saved.scale, 256.0);
  EXPECT_EQ(saved.growth_tracker, 3);
  GradScaler b({.growth_interval = 4});
  b.load_state(saved);
  EXPECT_EQ(b.get_scale(), 256.0);
  for (GradScaler* g : {&a, &b}) {  // one more clean step grows both
    s.set_grad({0, 0, 0, 0});
    g->step(s.opt);
    g->update();
    EXPECT_EQ(g->get_scale(), 512.0);
  }
  expect_error([&] { b.load_state({.scale = -1.0}); }, {"scale", "-1"});
}

TEST(GradScaler, DisabledIsAPassThrough) {
  OneParam s;
  GradScaler scaler({.enabled = false});
  EXPECT_EQ(scaler.get_scale(), 1.0);
  EXPECT_EQ(scaler.scale(scalar_tensor(3.0)).item(), 3.0);
  s.set_grad({1, 1, 1, 1});
  EXPECT_TRUE(scaler.step(s.opt));
  scaler.update();
  EXPECT_EQ(s.p.to_vector<double>(), (std::vector<double>{0, 1, 2, 3}));
}

TEST(GradScaler, MisuseIsAnError) {
  OneParam s;
  GradScaler scaler;
  s.set_grad({1, 1, 1, 1});
  scaler.unscale_(s.opt);
  expect_error([&] { scaler.unscale_(s.opt); }, {"unscale_", "already"});
  scaler.step(s.opt);
  expect_error([&] { scaler.step(s.opt); }, {"step", "already"});
  expect_error([] { GradScaler g({.init_scale = 0.0}); }, {"init_scale"});
}

// What a sharded optimizer (ZeRO-1) uses: the device-side flag after unscale_, and a flag put back
// (the sum over processes) that decides the step instead of this process's own check.
TEST(GradScaler, FoundInfIsTheFlagAndSetFoundInfDecidesTheStep) {
  OneParam s;
  GradScaler scaler({.init_scale = 1024.0});
  expect_error([&] { scaler.found_inf(); }, {"found_inf", "unscale_"});
  EXPECT_FALSE(scaler.unscaled());
  s.set_grad({1024.0, 1024.0, 1024.0, 1024.0});
  scaler.unscale_(s.opt);
  EXPECT_TRUE(scaler.unscaled());
  EXPECT_EQ(scaler.found_inf().numel(), 1);
  EXPECT_EQ(scaler.found_inf().item(), 0.0);  // clean here...
  scaler.set_found_inf(from_vector(std::vector<double>{std::numeric_limits<double>::quiet_NaN()}, {1}));
  EXPECT_FALSE(scaler.step(s.opt));  // ...but another process overflowed: skip with it
  EXPECT_EQ(s.p.to_vector<double>(), (std::vector<double>{1, 2, 3, 4}));
  expect_error([&] { scaler.set_found_inf(Tensor()); }, {"set_found_inf", "step"});
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 512.0);
  EXPECT_FALSE(scaler.unscaled());

  // An inf gradient's flag is NaN; and the flag put back is what step() reads (none: it steps).
  s.set_grad({512.0, std::numeric_limits<double>::infinity(), 512.0, 512.0});
  scaler.unscale_(s.opt);
  EXPECT_TRUE(std::isnan(scaler.found_inf().item()));
  scaler.set_found_inf(Tensor());
  EXPECT_TRUE(scaler.step(s.opt));
  scaler.update();
  EXPECT_EQ(scaler.state().growth_tracker, 1);
  expect_error([&] { scaler.set_found_inf(Tensor()); }, {"set_found_inf", "unscale_"});
}

// f16 on the CPU: y = x @ w under f16 autocast, loss = tiny * sum(y). The gradient reaching the
// f16 matmul output is `tiny`, below f16's smallest subnormal (6e-8), so it flushes to zero
// unless the loss is scaled first.
struct TinyLossModel {
  Tensor x, w;
  TinyLossModel() {
    Generator gen(3);
    x = randn({8, 16}, {}, &gen);
    w = randn({16, 4}, {}, &gen).requires_grad_();
  }
  Tensor loss(double tiny) const {
    AutocastGuard guard(DType::f16);
    return mul(sum(matmul(x, w).to(DType::f32)), tiny);
  }
};

TEST(GradScaler, F16AutocastScaledGradientsSurviveUnderflow) {
  const double tiny = 1e-8;
  TinyLossModel m;
  // Reference: f32 throughout, d loss / d w = tiny * x^T @ ones.
  const Tensor expected = mul(matmul(m.x.t(), ones({8, 4})), tiny);

  m.loss(tiny).backward();  // unscaled: the f16 gradient is all zeros
  EXPECT_EQ(m.w.grad().dtype(), DType::f32);
  EXPECT_EQ(max_abs_diff(m.w.grad(), zeros({16, 4})), 0.0);
  m.w.set_grad(Tensor());

  SGD opt({ParamGroup{.params = {m.w}}}, {.lr = 0.0});
  GradScaler scaler;
  scaler.scale(m.loss(tiny)).backward();
  scaler.unscale_(opt);
  // f16 keeps ~3 decimal digits of the scaled values; relative to the gradient's size.
  const double rel = max_abs_diff(m.w.grad(), expected) / max_abs_diff(expected, zeros({16, 4}));
  EXPECT_LT(rel, 2e-3);
  // clip_grad_norm_ after unscale_ sees the true norm.
  const double norm = clip_grad_norm_({m.w}, 1.0);
  EXPECT_NEAR(norm, std::sqrt(sum(mul(expected, expected)).item()), 2e-3 * norm);
  EXPECT_TRUE(scaler.step(opt));
  scaler.update();
}

TEST(GradScaler, F16AutocastBacksOffFromOverflowThenTrains) {
  // A scale of 2^40 makes the f16 output gradient inf (f16 max 65504): the scaler must halve its
  // way down to a scale that fits, skipping those steps, and then train normally.
  Generator gen(5);
  const Tensor x = randn({32, 8}, {}, &gen);
  const Tensor target = matmul(x, randn({8, 1}, {}, &gen));
  Tensor w = zeros({8, 1}).requires_grad_();
  SGD opt({ParamGroup{.params = {w}}}, {.lr = 0.1});
  GradScaler scaler({.init_scale = std::ldexp(1.0, 40), .growth_interval = 1000});
  std::vector<double> losses;
  int skipped = 0;
  for (int step = 0; step < 80; ++step) {
    Tensor loss;
    {
      AutocastGuard guard(DType::f16);
      const Tensor err = sub(matmul(x, w).to(DType::f32), target);
      loss = mean(mul(err, err));
    }
    scaler.scale(loss).backward();
    if (!scaler.step(opt)) ++skipped;
    scaler.update();
    opt.zero_grad();
    losses.push_back(loss.item());
  }
  EXPECT_EQ(skipped, scaler.skipped_steps());
  // 2^40 down to at most 2^15 (the largest power of two whose gradient can fit under 65504)
  // takes at least 25 halvings; the scale stays put afterwards (no growth within 1000 steps).
  EXPECT_GE(skipped, 25);
  EXPECT_LE(skipped, 40);
  EXPECT_LE(scaler.get_scale(), std::ldexp(1.0, 15));
  EXPECT_EQ(losses[skipped - 1], losses[0]);  // skipped steps did not move w
  EXPECT_LT(losses.back(), 0.05 * losses[0]);
}

}  // namespace
}  // namespace kiln
