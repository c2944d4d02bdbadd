// Optimizers and clipping on the CPU.
//   - SGD (plain, momentum with dampening and weight decay, nesterov): three steps against
//     numbers derived by hand below, and against a scalar loop written from PyTorch's
//     documented update rule, on random tensors;
//   - Adam and AdamW: a first step derived by hand, and three steps against a scalar loop
//     written from the Adam paper (bias-corrected m̂, v̂), in f64 and f32;
//   - skipped parameters, zero_grad, version bumps, make_param_groups, clip_grad_norm_,
//     registries, and the checkpoint state: a save/load round trip that continues bit for
//     bit, and one error per kind of bad entry.
// The schedules are in test_lr_schedule.cpp, the PyTorch parity in test_optim_parity.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "optim/adam.h"
#include "optim/clip_grad.h"
#include "optim/fused_step.h"
#include "optim/lr_schedule.h"
#include "optim/param_groups.h"
#include "optim/registry.h"
#include "optim/sgd.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"
#include "tests/optim_testing.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::param_of;
using testing::values_tensor;
using testing::uniform_values;

// ---------------------------------------------------------------- helpers

// Every |got - want| <= tol * max(1, max|want|).
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * scale) << what << " element " << i;
}

std::map<std::string, Tensor> state_map(const Optimizer& opt) {
  std::map<std::string, Tensor> m;
  for (const auto& [name, t] : opt.state_tensors()) m[name] = t;
  return m;
}

// ---------------------------------------------------------------- SGD

// One scalar per element, from torch.optim.SGD's documented algorithm.
struct SgdReference {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  std::vector<double> buf;

  void step(std::vector<double>& p, const std::vector<double>& g) {
    const bool first = buf.empty();
    if (first) buf.resize(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      double d = g[i] + weight_decay * p[i];
      if (momentum != 0) {
        buf[i] = first ? d : momentum * buf[i] + (1 - dampening) * d;
        d = nesterov ? d + momentum * buf[i] : buf[i];
      }
      p[i] -= lr * d;
    }
  }
};

// Three steps of p = 1 with a constant gradient g; returns p after each step.
std::vector<double> sgd_three_steps(const OptimizerOptions& o, double g) {
  Tensor p = param_of({1.0}, {1});
  SGD opt({{.params = {p}}}, o);
  std::vector<double> out;
  for (int s = 0; s < 3; ++s) {
    p.set_grad(values_tensor({g}, {1}));
    opt.step();
    out.push_back(p.item());
  }
  return out;
}

TEST(SGD, HandDerivedSteps) {
  // Momentum 0.9, lr 0.1, g = 0.5:
  //   step 1: buf = 0.5 (the first gradient);   p = 1     - 0.1*0.5   = 0.95
  //   step 2: buf = 0.9*0.5  + 0.5 = 0.95;      p = 0.95  - 0.1*0.95  = 0.855
  //   step 3: buf = 0.9*0.95 + 0.5 = 1.355;     p = 0.855 - 0.1*1.355 = 0.7195
  std::vector<double> p = sgd_three_steps({.lr = 0.1, .momentum = 0.9}, 0.5);
  expect_close(p, {0.95, 0.855, 0.7195}, 1e-15, "momentum");

  // Nesterov, same numbers: d = g + 0.9*buf with buf as above.
  //   step 1: d = 0.5 + 0.45   = 0.95;    p = 1     - 0.095   = 0.905
  //   step 2: d = 0.5 + 0.855  = 1.355;   p = 0.905 - 0.1355  = 0.7695
  //   step 3: d = 0.5 + 1.2195 = 1.7195;  p = 0.7695 - 0.17195 = 0.59755
  p = sgd_three_steps({.lr = 0.1, .momentum = 0.9, .nesterov = true}, 0.5);
  expect_close(p, {0.905, 0.7695, 0.59755}, 1e-15, "nesterov");

  // Weight decay 0.1 with g = 0 (so d = 0.1*p), momentum 0.5, dampening 0.5, lr 0.1:
  //   step 1: d = 0.1;       buf = 0.1 (the first d, undampened);  p = 1 - 0.01 = 0.99
  //   step 2: d = 0.099;     buf = 0.05 + 0.0495 = 0.0995;         p = 0.99 - 0.00995 = 0.98005
  //   step 3: d = 0.098005;  buf = 0.04975 + 0.0490025 = 0.0987525;
  //                          p = 0.98005 - 0.00987525 = 0.97017475
  p = sgd_three_steps({.lr = 0.1, .weight_decay = 0.1, .momentum = 0.5, .dampening = 0.5}, 0.0);
  expect_close(p, {0.99, 0.98005, 0.97017475}, 1e-15, "weight decay and dampening");

  // Plain SGD: p = 1 - 3 * 0.1 * 0.5 after three steps, 0.05 per step.
  p = sgd_three_steps({.lr = 0.1}, 0.5);
  expect_close(p, {0.95, 0.9, 0.85}, 1e-15, "plain");
}

TEST(SGD, MatchesScalarReferenceOnRandomTensors) {
  struct Case {
    const char* name;
    OptimizerOptions options;
  };
  const Case cases[] = {
      {"plain", {.lr = 0.05}},
      {"momentum, dampening, decay",
       {.lr = 0.05, .weight_decay = 0.01, .momentum = 0.9, .dampening = 0.1}},
      {"nesterov, decay", {.lr = 0.05, .weight_decay = 0.02, .momentum = 0.8, .nesterov = true}},
  };
  for (const Case& c : cases) {
    const Shape shape = {5, 7};
    std::vector<double> ref = uniform_values(35, -1, 1, 1);
    Tensor p = param_of(ref, shape);
    SGD opt({{.params = {p}}}, c.options);
    SgdReference sgd{c.options.lr,        c.options.momentum,
                     c.options.dampening, c.options.weight_decay.value_or(0.0),
                     c.options.nesterov,  {}};
    for (uint32_t s = 0; s < 3; ++s) {
      const std::vector<double> g = uniform_values(35, -2, 2, 100 + s);
      p.set_grad(values_tensor(g, shape));
      opt.step();
      sgd.step(ref, g);
      expect_close(p.to_vector<double>(), ref, 1e-14,
                   std::string(c.name) + " step " + std::to_string(s + 1));
    }
  }
}

TEST(SGD, RejectsBadOptions) {
  Tensor p = param_of({1.0}, {1});
  expect_error([&] { SGD({{.params = {p}}}, {.lr = 0.1, .nesterov = true}); },
               "nesterov momentum needs momentum > 0 and dampening 0");
  expect_error(
      [&] {
        SGD({{.params = {p}}}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true});
      },
      "dampening 0.1");
  expect_error([&] { SGD({{.params = {p}}}, {.lr = -1.0}); }, "lr must be >= 0, got -1");
  expect_error([&] { SGD({{.params = {p}}}, {.momentum = -0.5}); }, "momentum must be >= 0");
  expect_error([&] { SGD(std::vector<ParamGroup>{ParamGroup{}}); }, "empty parameter list");
  expect_error([&] { SGD({{.params = {p}}, {.params = {p}}}); }, "appears more than once");
  Tensor non_leaf;
  {
    Tensor q = param_of({1.0}, {1});
    non_leaf = q * 2.0;
  }
  expect_error([&] { SGD({{.params = {non_leaf}}}); }, "not a leaf tensor");
}

// ---------------------------------------------------------------- Adam / AdamW

// One scalar per element, from the Adam paper (Kingma & Ba, Algorithm 1) with PyTorch's two
// kinds of weight decay.
struct AdamReference {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
  std::vector<double> m, v;
  int t = 0;

  void step(std::vector<double>& p, const std::vector<double>& grad) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grad[i];
      if (decoupled)
        p[i] -= lr * weight_decay * p[i];
      else
        g += weight_decay * p[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(beta1, t));
      const double v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

TEST(Adam, FirstStepByHand) {
  // After one step m̂ = g and v̂ = g², so p moves by lr * g / (|g| + eps): p = 1, g = 2,
  // lr = 0.1, eps = 1e-8 gives 1 - 0.1 * 2 / (2 + 1e-8) = 1 - 0.1 * (1 - 5e-9 + O(1e-17)),
  // that is 0.9000000005.
  Tensor p = param_of({1.0}, {1});
  Adam adam({{.params = {p}}}, {.lr = 0.1});
  p.set_grad(values_tensor({2.0}, {1}));
  adam.step();
  EXPECT_NEAR(p.item(), 0.9000000005, 1e-15);

  // AdamW with weight_decay 0.5 first shrinks p by 1 - 0.1*0.5 = 0.95, then takes the same
  // step: 0.95 - 0.0999999995 = 0.8500000005.
  Tensor q = param_of({1.0}, {1});
  AdamW adamw({{.params = {q}}}, {.lr = 0.1, .weight_decay = 0.5});
  q.set_grad(values_tensor({2.0}, {1}));
  adamw.step();
  EXPECT_NEAR(q.item(), 0.8500000005, 1e-15);
}

TEST(Adam, MatchesScalarReference) {
  for (const bool decoupled : {false, true}) {
    for (const DType dtype : {DType::f64, DType::f32}) {
      const std::string what =
          std::string(decoupled ? "adamw " : "adam ") + std::string(dtype_name(dtype));
      const OptimizerOptions o{
          .lr = 0.01, .weight_decay = 0.05, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6};
      const Shape shapes[] = {{3, 4}, {4}, {1}};
      std::vector<Tensor> params;
      std::vector<std::vector<double>> ref;
      std::vector<AdamReference> refs;
      for (size_t i = 0; i < 3; ++i) {
        // Round the start through the dtype so both sides begin from the same values.
        ref.push_back(
            values_tensor(uniform_values(shape_numel(shapes[i]), -1, 1, 10 + i), shapes[i], dtype)
                .to_vector<double>());
        params.push_back(param_of(ref.back(), shapes[i], dtype));
        refs.push_back({o.lr, o.beta1, o.beta2, o.eps, *o.weight_decay, decoupled, {}, {}});
      }
      std::unique_ptr<Optimizer> opt =
          decoupled ? std::unique_ptr<Optimizer>(new AdamW({{.params = params}}, o))
                    : std::unique_ptr<Optimizer>(new Adam({{.params = params}}, o));
      for (uint32_t s = 0; s < 3; ++s) {
        for (size_t i = 0; i < 3; ++i) {
          Tensor g = values_tensor(uniform_values(shape_numel(shapes[i]), -2, 2, 50 + 7 * s + i),
                                   shapes[i], dtype);
          params[i].set_grad(g);
          refs[i].step(ref[i], g.to_vector<double>());
        }
        opt->step();
        // f32: each step rounds p, m and v to f32 (2^-24 relative), and an update of ~lr
        // carries that on; 1e-6 of max(1, |p|) leaves room for three steps of it.
        const double tol = dtype == DType::f64 ? 1e-13 : 1e-6;
        for (size_t i = 0; i < 3; ++i) {
          EXPECT_EQ(params[i].dtype(), dtype);
          expect_close(params[i].to_vector<double>(), ref[i], tol,
                       what + " step " + std::to_string(s + 1) + " param " + std::to_string(i));
        }
      }
    }
  }
}

TEST(Adam, RejectsBadOptions) {
  Tensor p = param_of({1.0}, {1});
  expect_error([&] { Adam({{.params = {p}}}, {.beta1 = 1.0}); },
               "adam: beta1 must be in [0, 1), got 1");
  expect_error([&] { AdamW({{.params = {p}}}, {.beta2 = -0.1}); },
               "adamw: beta2 must be in [0, 1)");
  expect_error([&] { AdamW({{.params = {p}}}, {.eps = -1e-8}); }, "eps must be >= 0");
  expect_error([&] { AdamW({{.params = {p}}}, {.weight_decay = -0.1}); },
               "weight_decay must be >= 0");
  Tensor h = values_tensor({1.0}, {1}, DType::bf16);
  h.requires_grad_();
  expect_error([&] { AdamW({{.params = {h}}}); }, "parameters must be f32 or f64, got bf16[1]");
}

TEST(Adam, DefaultWeightDecayIsPyTorchs) {
  Tensor p = param_of({1.0}, {1});
  EXPECT_EQ(*AdamW({{.params = {p}}}).param_groups()[0].weight_decay, 1e-2);
  EXPECT_EQ(*Adam({{.params = {p}}}).param_groups()[0].weight_decay, 0.0);
  EXPECT_EQ(*SGD({{.params = {p}}}).param_groups()[0].weight_decay, 0.0);
  // A group's own value wins over the optimizer's.
  AdamW opt({{.params = {p}, .lr = 0.5, .weight_decay = 0.0}}, {.lr = 0.1, .weight_decay = 0.3});
  EXPECT_EQ(*opt.param_groups()[0].lr, 0.5);
  EXPECT_EQ(*opt.param_groups()[0].weight_decay, 0.0);
  EXPECT_EQ(opt.param_groups()[0].initial_lr, 0.5);
}

// ---------------------------------------------------------------- every optimizer

TEST(Optimizer, SkipsParametersWithoutGradient) {
  for (const std::string name : {"sgd", "adam", "adamw"}) {
    Tensor a = param_of({1.0, 2.0}, {2}), b = param_of({3.0, 4.0, 5.0}, {3});
    auto opt = make_optimizer(name, {{.params = {a, b}}},
                              {.lr = 0.1, .weight_decay = 0.0, .momentum = 0.9});
    a.set_grad(values_tensor({0.5, -0.5}, {2}));
    opt->step();
    EXPECT_EQ(b.to_vector<double>(), (std::vector<double>{3.0, 4.0, 5.0})) << name;
    EXPECT_NE(a.to_vector<double>(), (std::vector<double>{1.0, 2.0})) << name;
    std::map<std::string, Tensor> state = state_map(*opt);
    for (const auto& [key, t] : state)
      EXPECT_NE(key.rfind("state.1.", 0), 0u) << name << ": " << key;
    if (name != "sgd") {
      // b joins at the next step with its own count: its first step, a's second.
      b.set_grad(values_tensor({1.0, 1.0, 1.0}, {3}));
      opt->step();
      state = state_map(*opt);
      EXPECT_EQ(state.at("state.0.step").item<int64_t>(), 2) << name;
      EXPECT_EQ(state.at("state.1.step").item<int64_t>(), 1) << name;
      // A first Adam step moves every element by lr * g / (|g| + eps) ~ lr.
      expect_close(b.to_vector<double>(), {2.9, 3.9, 4.9}, 1e-8, name + " late first step");
    }
  }
}

TEST(Optimizer, UpdatesInPlaceWithoutAutogradAndBumpsVersions) {
  for (const std::string name : {"sgd", "adamw"}) {
    Tensor p = param_of({1.0, 2.0}, {2});
    void* data = p.data_ptr();
    auto opt = make_optimizer(name, {{.params = {p}}}, {.lr = 0.1});
    p.set_grad(values_tensor({1.0, 1.0}, {2}));
    const uint32_t before = p.version();
    opt->step();
    EXPECT_GT(p.version(), before) << name;
    EXPECT_EQ(p.data_ptr(), data) << name;
    EXPECT_TRUE(p.is_leaf()) << name;
    EXPECT_TRUE(p.requires_grad()) << name;
  }
}

TEST(Optimizer, ZeroGrad) {
  Tensor p = param_of({1.0, 2.0}, {2});
  SGD opt({{.params = {p}}});
  p.set_grad(values_tensor({3.0, 4.0}, {2}));
  Tensor g = p.grad();
  opt.zero_grad(/*set_to_none=*/false);
  EXPECT_EQ(p.grad().to_vector<double>(), (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(p.grad().data_ptr(), g.data_ptr());  // zeroed in place
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());
}

TEST(Optimizer, ParamGroupsSplitByDim) {
  Tensor w = param_of(std::vector<double>(6, 1.0), {2, 3}), b = param_of({1.0, 2.0}, {2});
  Tensor conv = param_of(std::vector<double>(8, 1.0), {2, 1, 2, 2}), scale = param_of({1.0}, {1});
  Tensor frozen = values_tensor(std::vector<double>(4, 1.0), {2, 2});  // requires no grad
  std::vector<ParamGroup> groups = make_param_groups({{"fc.weight", w},
                                                      {"fc.bias", b},
                                                      {"conv.weight", conv},
                                                      {"norm.weight", scale},
                                                      {"frozen", frozen}},
                                                     0.1);
  ASSERT_EQ(groups.size(), 2u);
  ASSERT_EQ(groups[0].params.size(), 2u);
  EXPECT_EQ(groups[0].params[0].impl(), w.impl());
  EXPECT_EQ(groups[0].params[1].impl(), conv.impl());
  EXPECT_EQ(*groups[0].weight_decay, 0.1);
  ASSERT_EQ(groups[1].params.size(), 2u);
  EXPECT_EQ(groups[1].params[0].impl(), b.impl());
  EXPECT_EQ(groups[1].params[1].impl(), scale.impl());
  EXPECT_EQ(*groups[1].weight_decay, 0.0);
  EXPECT_FALSE(groups[0].lr.has_value());  // the optimizer's lr

  // AdamW keeps the groups' decay: with g = 0 the decayed matrix shrinks, the bias does not.
  AdamW opt(groups, {.lr = 0.1});
  for (Tensor t : {w, b, conv, scale}) t.set_grad(zeros_like(t));
  opt.step();
  expect_close(w.to_vector<double>(), std::vector<double>(6, 0.99), 1e-15, "decayed weight");
  expect_close(b.to_vector<double>(), {1.0, 2.0}, 0, "undecayed bias");

  expect_error(
      [&] {
        make_param_groups({{"a", w}, {"a", b}}, 0.1);
      },
      "parameter 'a' is listed twice");
  expect_error([&] { make_param_groups({}, 0.1); }, "no parameters");
  expect_error([&] { make_param_groups({{"x", Tensor()}}, 0.1); }, "parameter 'x' is undefined");
}

// ---------------------------------------------------------------- fused update

TEST(FusedAdam, NonContiguousParameterMatchesContiguous) {
  // A transposed leaf updates through a contiguous copy; the result is the same as updating
  // the contiguous tensor directly.
  const std::vector<double> v = uniform_values(12, -1, 1, 3), gv = uniform_values(12, -1, 1, 4);
  Tensor base = values_tensor(v, {3, 4});
  Tensor transposed = values_tensor(v, {4, 3}).t();  // [3, 4] view with strides (1, 3)
  transposed.copy_(base);
  ASSERT_FALSE(transposed.is_contiguous());
  std::vector<Tensor> p1 = {base}, p2 = {transposed}, g = {values_tensor(gv, {3, 4})};
  std::vector<Tensor> m1 = {zeros({3, 4}, {.dtype = DType::f64})},
                      v1 = {zeros({3, 4}, {.dtype = DType::f64})};
  std::vector<Tensor> m2 = {zeros({3, 4}, {.dtype = DType::f64})},
                      v2 = {zeros({3, 4}, {.dtype = DType::f64})};
  const AdamHyperParams h{.lr = 0.1, .weight_decay = 0.1};
  fused_adam_update(p1, g, m1, v1, h, 1);
  fused_adam_update(p2, g, m2, v2, h, 1);
  EXPECT_EQ(transposed.to_vector<double>(), base.to_vector<double>());
  EXPECT_NE(base.to_vector<double>(), v);
}

TEST(FusedAdam, RejectsMismatchedLists) {
  auto t = [](const Shape& s, DType d = DType::f32) { return zeros(s, {.dtype = d}); };
  std::vector<Tensor> p = {t({2})}, g = {t({2})}, m = {t({2})}, v = {t({2})}, none;
  expect_error([&] { fused_adam_update(p, none, m, v, {}, 1); },
               "lists of different lengths (1 params, 0 grads");
  std::vector<Tensor> g3 = {t({3})};
  expect_error([&] { fused_adam_update(p, g3, m, v, {}, 1); },
               "grads[0] is f32[3] on cpu but params[0] is f32[2] on cpu");
  std::vector<Tensor> m64 = {t({2}, DType::f64)};
  expect_error([&] { fused_adam_update(p, g, m64, v, {}, 1); }, "exp_avgs[0] is f64[2]");
  std::vector<Tensor> p2 = {t({2}), t({2}, DType::f64)}, g2 = {t({2}), t({2}, DType::f64)};
  std::vector<Tensor> m2 = g2, v2 = g2;
  expect_error([&] { fused_adam_update(p2, g2, m2, v2, {}, 1); }, "one device and dtype per call");
  expect_error([&] { fused_adam_update(p, g, m, v, {}, 0); }, "step must be >= 1, got 0");
  std::vector<Tensor> pi = {zeros({2}, {.dtype = DType::i64})};
  expect_error([&] { fused_adam_update(pi, pi, pi, pi, {}, 1); }, "must be f32 or f64");
}

// ---------------------------------------------------------------- clip_grad_norm_

TEST(ClipGradNorm, ScalesByGlobalNorm) {
  // Gradients (3, 4) and (12): total norm sqrt(9 + 16 + 144) = 13.
  Tensor a = param_of({0.0, 0.0}, {2}), b = param_of({0.0}, {1}, DType::f32),
         c = param_of({0.0}, {1});
  a.set_grad(values_tensor({3.0, 4.0}, {2}));
  b.set_grad(values_tensor({12.0}, {1}, DType::f32));
  // c has no gradient and is left out.
  EXPECT_NEAR(clip_grad_norm_({a, b, c}, 100.0), 13.0, 1e-12);
  EXPECT_EQ(a.grad().to_vector<double>(), (std::vector<double>{3.0, 4.0}));  // under the limit
  EXPECT_EQ(b.grad().to_vector<double>(), (std::vector<double>{12.0}));

  // max_norm 6.5 scales everything by 6.5 / (13 + 1e-6), about one half.
  Tensor ga = a.grad();
  EXPECT_NEAR(clip_grad_norm_({a, b, c}, 6.5), 13.0, 1e-12);
  const double coef = 6.5 / (13.0 + 1e-6);
  expect_close(a.grad().to_vector<double>(), {3 * coef, 4 * coef}, 1e-15, "a");
  expect_close(b.grad().to_vector<double>(), {12 * coef}, 1e-7, "b (f32)");
  EXPECT_EQ(a.grad().data_ptr(), ga.data_ptr());  // in place
  // The clipped norm is max_norm (up to the 1e-6 guard).
  EXPECT_NEAR(clip_grad_norm_({a, b}, 100.0), 6.5, 1e-6);

  EXPECT_EQ(clip_grad_norm_({c}, 1.0), 0.0);
  expect_error([&] { clip_grad_norm_({a}, 0.0); }, "max_norm must be > 0, got 0");
}

// ---------------------------------------------------------------- registries

TEST(Registry, UnknownNamesListKnownOnes) {
  Tensor p = param_of({1.0}, {1});
  expect_error([&] { make_optimizer("adamx", {{.params = {p}}}); },
               "unknown optimizer: adamx (known: adam, adamw, sgd)");
  expect_error([] { make_lr_schedule("linear"); },
               "unknown lr schedule: linear (known: constant, cosine, onecycle, step)");
  EXPECT_EQ(optimizer_names(), (std::vector<std::string>{"adam", "adamw", "sgd"}));
  EXPECT_EQ(make_optimizer("adamw", {{.params = {p}}})->name(), "adamw");
  expect_error(
      [] {
        register_optimizer("sgd", [](std::vector<ParamGroup> g, const OptimizerOptions& o) {
          return std::unique_ptr<Optimizer>(new SGD(std::move(g), o));
        });
      },
      "optimizer already registered: sgd");
  register_lr_schedule("half", [](const LRScheduleOptions& o) {
    LRScheduleOptions h = o;
    h.lr = o.lr / 2;
    return std::unique_ptr<LRSchedule>(new ConstantLR(h));
  });
  EXPECT_EQ(make_lr_schedule("half", {.lr = 1.0})->lr_at(7), 0.5);
}

// ---------------------------------------------------------------- checkpoint state

struct TwoParams {
  Tensor w = param_of(uniform_values(6, -1, 1, 7), {2, 3});
  Tensor b = param_of(uniform_values(3, -1, 1, 8), {3});
  void set_grads(uint32_t seed) {
    w.set_grad(values_tensor(uniform_values(6, -1, 1, seed), {2, 3}));
    b.set_grad(values_tensor(uniform_values(3, -1, 1, seed + 1), {3}));
  }
  TwoParams clone() const {
    TwoParams c;
    c.w = w.detach().clone().requires_grad_();
    c.b = b.detach().clone().requires_grad_();
    return c;
  }
};

TEST(OptimizerState, SaveLoadContinuesIdentically) {
  for (const std::string name : {"sgd", "adam", "adamw"}) {
    const OptimizerOptions o{.lr = 0.05, .weight_decay = 0.01, .momentum = 0.9};
    TwoParams a;
    auto opt_a = make_optimizer(name, make_param_groups({{"w", a.w}, {"b", a.b}}, 0.1), o);
    for (uint32_t s = 0; s < 2; ++s) {
      a.set_grads(20 + 2 * s);
      opt_a->step();
    }
    // Save (copies, as a checkpoint file would), rebuild from scratch, load.
    NamedTensors saved;
    for (const auto& [key, t] : opt_a->state_tensors()) saved.emplace_back(key, t.clone());
    TwoParams b = a.clone();
    auto opt_b = make_optimizer(name, make_param_groups({{"w", b.w}, {"b", b.b}}, 0.1), o);
    opt_b->param_groups()[0].lr = 123.0;  // overwritten by the loaded value
    opt_b->load_state_tensors(saved);
    EXPECT_EQ(*opt_b->param_groups()[0].lr, 0.05) << name;
    EXPECT_EQ(*opt_b->param_groups()[0].weight_decay, 0.1) << name;
    EXPECT_EQ(*opt_b->param_groups()[1].weight_decay, 0.0) << name;
    // The loaded state is a copy: clobbering the source changes nothing.
    for (auto& [key, t] : saved) t.fill_(7.0);

    for (uint32_t s = 0; s < 2; ++s) {
      a.set_grads(40 + 2 * s);
      b.set_grads(40 + 2 * s);
      opt_a->step();
      opt_b->step();
      EXPECT_EQ(a.w.to_vector<double>(), b.w.to_vector<double>()) << name << " step " << s;
      EXPECT_EQ(a.b.to_vector<double>(), b.b.to_vector<double>()) << name << " step " << s;
    }
    std::map<std::string, Tensor> sa = state_map(*opt_a), sb = state_map(*opt_b);
    ASSERT_EQ(sa.size(), sb.size()) << name;
    for (const auto& [key, t] : sa) {
      ASSERT_TRUE(sb.count(key)) << name << ": " << key;
      EXPECT_EQ(t.dtype(), sb[key].dtype()) << key;
      EXPECT_EQ(t.to_vector<double>(), sb[key].to_vector<double>()) << name << ": " << key;
    }
    if (name != "sgd") {
      EXPECT_EQ(sa.at("state.1.step").item<int64_t>(), 4);
    }
  }
}

TEST(OptimizerState, NamesFollowPyTorchStateDict) {
  TwoParams a;
  AdamW opt(make_param_groups({{"w", a.w}, {"b", a.b}}, 0.1));
  a.set_grads(1);
  opt.step();
  std::vector<std::string> names;
  for (const auto& [key, t] : opt.state_tensors()) names.push_back(key);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq", "state.1.step",
                       "state.1.exp_avg", "state.1.exp_avg_sq", "param_groups.0.params",
                       "param_groups.0.lr", "param_groups.0.weight_decay", "param_groups.1.params",
                       "param_groups.1.lr", "param_groups.1.weight_decay"}));
  std::map<std::string, Tensor> m = state_map(opt);
  EXPECT_EQ(m["state.0.step"].dtype(), DType::i64);
  EXPECT_EQ(m["state.0.step"].dim(), 0);
  EXPECT_EQ(m["state.1.exp_avg"].shape(), (Shape{3}));
  EXPECT_EQ(m["param_groups.1.params"].to_vector<int64_t>(), (std::vector<int64_t>{1}));
}

TEST(OptimizerState, EmptyGroupRoundTrips) {
  // A model without biases leaves make_param_groups' second group empty.
  Tensor w = param_of(uniform_values(6, -1, 1, 9), {2, 3});
  AdamW opt(make_param_groups({{"w", w}}, 0.1));
  w.set_grad(values_tensor(uniform_values(6, -1, 1, 10), {2, 3}));
  opt.step();
  std::map<std::string, Tensor> m = state_map(opt);
  EXPECT_EQ(m.at("param_groups.1.params").shape(), (Shape{0}));
  Tensor w2 = w.detach().clone().requires_grad_();
  AdamW resumed(make_param_groups({{"w", w2}}, 0.1));
  resumed.load_state_tensors(opt.state_tensors());
  EXPECT_EQ(state_map(resumed).at("state.0.exp_avg").to_vector<double>(),
            m.at("state.0.exp_avg").to_vector<double>());
}

TEST(OptimizerState, LoadErrorsNameTheEntry) {
  TwoParams a;
  AdamW opt(make_param_groups({{"w", a.w}, {"b", a.b}}, 0.1));
  a.set_grads(1);
  opt.step();
  const NamedTensors good = opt.state_tensors();
  auto without = [&](const std::string& drop) {
    NamedTensors out;
    for (const auto& e : good)
      if (e.first != drop) out.push_back(e);
    return out;
  };
  auto with = [&](const std::string& key, const Tensor& t) {
    NamedTensors out = good;
    for (auto& e : out)
      if (e.first == key) e.second = t;
    if (std::none_of(out.begin(), out.end(), [&](const auto& e) { return e.first == key; }))
      out.emplace_back(key, t);
    return out;
  };
  const TensorOptions f64{.dtype = DType::f64};
  expect_error([&] { opt.load_state_tensors(without("state.1.exp_avg_sq")); },
               "state entry 'state.1.exp_avg_sq' is missing");
  expect_error(
      [&] {
        opt.load_state_tensors(with("state.0.exp_avg", zeros({3, 2}, f64)));
      },
      "state entry 'state.0.exp_avg' has shape [3, 2] but parameter 0 is f64[2, 3] on cpu");
  expect_error(
      [&] {
        opt.load_state_tensors(with("state.0.momentum_buffer", zeros({2, 3}, f64)));
      },
      "unknown state entry 'state.0.momentum_buffer' (adamw keeps step, exp_avg, exp_avg_sq");
  expect_error(
      [&] {
        opt.load_state_tensors(with("model.fc.weight", zeros({2, 3}, f64)));
      },
      "unknown state entry 'model.fc.weight' (known: state.<i>.{step, exp_avg, exp_avg_sq}");
  expect_error([&] { opt.load_state_tensors(with("state.5.step", scalar_tensor(1, f64))); },
               "is for parameter 5 but this optimizer has 2 parameters");
  expect_error([&] { opt.load_state_tensors(with("state.0.step", scalar_tensor(1.5, f64))); },
               "'state.0.step' must be a whole number of steps, got 1.5");
  expect_error([&] { opt.load_state_tensors(without("param_groups.1.lr")); },
               "state entry 'param_groups.1.lr' is missing");
  expect_error(
      [&] {
        opt.load_state_tensors(
            with("param_groups.0.params", from_vector(std::vector<int64_t>{0, 1}, {2})));
      },
      "lists parameters [0, 1] but param group 0 of this optimizer holds [0]");
  expect_error([&] { opt.load_state_tensors(with("param_groups.2.lr", scalar_tensor(1, f64))); },
               "is for param group 2 but this optimizer has 2 groups");
  NamedTensors twice = good;
  twice.push_back(good.front());
  expect_error([&] { opt.load_state_tensors(twice); }, "state entry 'state.0.step' appears twice");
  // A failed load changes nothing.
  EXPECT_EQ(state_map(opt).at("state.0.step").item<int64_t>(), 1);

  // A parameter that never had a gradient has no state, and loading none for it is fine.
  TwoParams c;
  AdamW partial(make_param_groups({{"w", c.w}, {"b", c.b}}, 0.1));
  c.w.set_grad(zeros_like(c.w));
  partial.step();
  EXPECT_NO_THROW(opt.load_state_tensors(partial.state_tensors()));
  EXPECT_EQ(state_map(opt).count("state.1.step"), 0u);
}

}  // namespace
}  // namespace kiln
