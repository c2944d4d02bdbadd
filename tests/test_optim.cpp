// Optimizers, schedules and clipping on the CPU.
//   - SGD (plain, momentum with dampening and weight decay, nesterov): three steps against
//     numbers derived by hand below, and against a scalar loop written from PyTorch's
//     documented update rule, on random tensors;
//   - Adam and AdamW: a first step derived by hand, and three steps against a scalar loop
//     written from the Adam paper (bias-corrected m̂, v̂), in f64 and f32;
//   - all three, and OneCycleLR, against Debian's PyTorch 1.13 (tests/parity/optim_step.py)
//     in f64 to 1e-10 relative, with two param groups and a parameter that misses a step;
//   - skipped parameters, zero_grad, version bumps, make_param_groups, clip_grad_norm_,
//     every schedule at its key steps, registries, and the checkpoint state: a save/load
//     round trip that continues bit for bit, and one error per kind of bad entry.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <optional>
#include <random>
#include <sstream>
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
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::uniform_values;

namespace fs = std::filesystem;

// ---------------------------------------------------------------- helpers

Tensor values_tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  return from_vector(v, shape, {.dtype = dtype});
}

Tensor param_of(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  Tensor p = values_tensor(v, shape, dtype);
  p.requires_grad_();
  return p;
}

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

// ---------------------------------------------------------------- schedules

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

// ---------------------------------------------------------------- PyTorch parity

struct TorchParamSpec {
  Shape shape;
  std::vector<double> values;
};
struct TorchGroupSpec {
  std::vector<int> params = {};
  std::optional<double> lr = std::nullopt, weight_decay = std::nullopt;
};
struct TorchOptimCase {
  std::string name, optimizer;
  OptimizerOptions options;
  std::vector<TorchParamSpec> params;
  std::vector<TorchGroupSpec> groups;  // empty: one group
  std::vector<std::vector<std::optional<std::vector<double>>>> grads;  // [step][param]
};
struct TorchOneCycleCase {
  std::string name;
  LRScheduleOptions options;
};

std::string json_number(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

std::string json_list(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json_number(v[i]);
  return s + "]";
}

std::string json_options(const TorchOptimCase& c) {
  const OptimizerOptions& o = c.options;
  std::string s = "{\"lr\": " + json_number(o.lr);
  if (o.weight_decay) s += ", \"weight_decay\": " + json_number(*o.weight_decay);
  if (c.optimizer == "sgd") {
    s += ", \"momentum\": " + json_number(o.momentum) +
         ", \"dampening\": " + json_number(o.dampening) +
         ", \"nesterov\": " + (o.nesterov ? "true" : "false");
  } else {
    s += ", \"betas\": [" + json_number(o.beta1) + ", " + json_number(o.beta2) +
         "], \"eps\": " + json_number(o.eps);
  }
  return s + "}";
}

std::string case_json(const TorchOptimCase& c) {
  std::string s = "{\"name\": \"" + c.name + "\", \"optimizer\": \"" + c.optimizer +
                  "\", \"options\": " + json_options(c) + ", \"params\": [";
  for (size_t i = 0; i < c.params.size(); ++i) {
    std::vector<double> shape(c.params[i].shape.begin(), c.params[i].shape.end());
    s += (i ? ", " : "") + std::string("{\"shape\": ") + json_list(shape) +
         ", \"values\": " + json_list(c.params[i].values) + "}";
  }
  s += "]";
  if (!c.groups.empty()) {
    s += ", \"groups\": [";
    for (size_t g = 0; g < c.groups.size(); ++g) {
      std::vector<double> idx(c.groups[g].params.begin(), c.groups[g].params.end());
      s += (g ? ", " : "") + std::string("{\"params\": ") + json_list(idx);
      if (c.groups[g].lr) s += ", \"lr\": " + json_number(*c.groups[g].lr);
      if (c.groups[g].weight_decay)
        s += ", \"weight_decay\": " + json_number(*c.groups[g].weight_decay);
      s += "}";
    }
    s += "]";
  }
  s += ", \"grads\": [";
  for (size_t st = 0; st < c.grads.size(); ++st) {
    s += st ? ", [" : "[";
    for (size_t i = 0; i < c.grads[st].size(); ++i)
      s += (i ? ", " : "") + (c.grads[st][i] ? json_list(*c.grads[st][i]) : std::string("null"));
    s += "]";
  }
  return s + "]}";
}

std::string case_json(const TorchOneCycleCase& c) {
  const LRScheduleOptions& o = c.options;
  return "{\"name\": \"" + c.name +
         "\", \"schedule\": \"onecycle\", \"steps\": " + std::to_string(o.total_steps) +
         ", \"options\": {\"max_lr\": " + json_number(o.lr) +
         ", \"total_steps\": " + std::to_string(o.total_steps) +
         ", \"pct_start\": " + json_number(o.pct_start) +
         ", \"div_factor\": " + json_number(o.div_factor) +
         ", \"final_div_factor\": " + json_number(o.final_div_factor) + "}}";
}

// Three steps over three parameters; parameter 2 has no gradient on step 2.
TorchOptimCase optim_case(std::string name, std::string optimizer, OptimizerOptions options,
                          std::vector<TorchGroupSpec> groups = {}) {
  TorchOptimCase c{std::move(name), std::move(optimizer), options, {}, std::move(groups), {}};
  const Shape shapes[] = {{3, 4}, {4}, {2, 1, 3}};
  for (uint32_t i = 0; i < 3; ++i)
    c.params.push_back({shapes[i], uniform_values(shape_numel(shapes[i]), -1, 1, 300 + i)});
  for (uint32_t s = 0; s < 3; ++s) {
    c.grads.emplace_back();
    for (uint32_t i = 0; i < 3; ++i) {
      if (s == 1 && i == 2) {
        c.grads.back().push_back(std::nullopt);
      } else {
        c.grads.back().push_back(uniform_values(shape_numel(shapes[i]), -2, 2, 400 + 10 * s + i));
      }
    }
  }
  return c;
}

class TorchParity : public ::testing::Test {
 protected:
  static std::vector<TorchOptimCase> optim_cases() {
    return {
        optim_case("sgd_plain", "sgd", {.lr = 0.05}),
        optim_case("sgd_momentum", "sgd",
                   {.lr = 0.05, .weight_decay = 0.01, .momentum = 0.9, .dampening = 0.1}),
        optim_case("sgd_nesterov", "sgd",
                   {.lr = 0.05, .weight_decay = 0.02, .momentum = 0.8, .nesterov = true}),
        optim_case("adam", "adam",
                   {.lr = 0.01, .weight_decay = 0.05, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6}),
        // weight_decay unset: both sides use AdamW's default 1e-2 for group 0.
        optim_case("adamw_groups", "adamw", {.lr = 0.01},
                   {{.params = {0}}, {.params = {1, 2}, .lr = 0.02, .weight_decay = 0.0}}),
    };
  }
  static std::vector<TorchOneCycleCase> onecycle_cases() {
    return {{"onecycle_default", {.lr = 0.1, .total_steps = 100}},
            // A peak between steps: 0.25 * 37 - 1 = 8.25.
            {"onecycle_custom",
             {.lr = 0.5,
              .total_steps = 37,
              .pct_start = 0.25,
              .div_factor = 10,
              .final_div_factor = 100}}};
  }

  static void SetUpTestSuite() {
    skip_reason_ = testing::python_unavailable(testing::kSystemPython, "torch");
    if (!skip_reason_.empty()) return;
    const fs::path script = testing::parity_script("optim_step.py");
    if (!fs::exists(script)) {
      failure_ = "reference script " + script.string() + " not found (set KILN_SOURCE_DIR)";
      return;
    }
    dir_ = testing::make_temp_dir("kiln_optim_").string();
    if (dir_.empty()) {
      failure_ = "cannot make a directory under " + fs::temp_directory_path().string();
      return;
    }
    const fs::path in = fs::path(dir_) / "cases.json", out = fs::path(dir_) / "torch.txt";
    {
      std::ofstream f(in);
      std::string sep = "[";
      for (const TorchOptimCase& c : optim_cases()) f << sep << case_json(c), sep = ",\n";
      for (const TorchOneCycleCase& c : onecycle_cases()) f << sep << case_json(c);
      f << "]\n";
    }
    const testing::CommandResult ref = testing::run_command(
        testing::kSystemPython + " '" + script.string() + "' '" + in.string() + "' '" + out.string() + "' 2>&1");
    if (!ref.ok) {
      failure_ = ref.failure;
      return;
    }
    std::ifstream f(out);
    for (std::string line; std::getline(f, line);) {
      std::istringstream is(line);
      std::string key, word;
      is >> key;
      std::vector<double>& values = torch_[key];
      while (is >> word) values.push_back(std::strtod(word.c_str(), nullptr));
    }
  }

  static void TearDownTestSuite() {
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  void SetUp() override {
    worst_rel_ = 0;
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(failure_.empty()) << failure_;
  }

  // max |kiln - torch| <= tol * max |torch| (the scale of that tensor).
  static void expect_matches_torch(const std::vector<double>& got, const std::string& key,
                                   double tol) {
    ASSERT_TRUE(torch_.count(key)) << "PyTorch wrote no " << key;
    const std::vector<double>& want = torch_.at(key);
    ASSERT_EQ(got.size(), want.size()) << key;
    double scale = 0, worst = 0;
    for (double w : want) scale = std::max(scale, std::abs(w));
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    worst_rel_ = std::max(worst_rel_, worst / std::max(scale, 1e-300));
    EXPECT_LE(worst, tol * std::max(scale, 1e-300))
        << key << ": largest |kiln - torch| " << worst << " against largest |torch| " << scale;
  }

  static inline std::string skip_reason_, failure_, dir_;
  static inline std::map<std::string, std::vector<double>> torch_;
  static inline double worst_rel_ = 0;  // the largest relative difference seen, for the log
};

TEST_F(TorchParity, OptimizersF64) {
  for (const TorchOptimCase& c : optim_cases()) {
    std::vector<Tensor> params;
    for (const TorchParamSpec& p : c.params) params.push_back(param_of(p.values, p.shape));
    std::vector<ParamGroup> groups;
    if (c.groups.empty()) groups.push_back({.params = params});
    for (const TorchGroupSpec& g : c.groups) {
      ParamGroup group{.lr = g.lr, .weight_decay = g.weight_decay};
      for (int i : g.params) group.params.push_back(params[i]);
      groups.push_back(group);
    }
    auto opt = make_optimizer(c.optimizer, groups, c.options);
    for (size_t s = 0; s < c.grads.size(); ++s) {
      opt->zero_grad();
      for (size_t i = 0; i < params.size(); ++i)
        if (c.grads[s][i]) params[i].set_grad(values_tensor(*c.grads[s][i], c.params[i].shape));
      opt->step();
      const std::string prefix = c.name + ".step" + std::to_string(s + 1) + ".";
      for (size_t i = 0; i < params.size(); ++i)
        expect_matches_torch(params[i].to_vector<double>(), prefix + "param" + std::to_string(i),
                             1e-10);
      // Every state entry kiln keeps matches PyTorch's, and PyTorch keeps no others.
      size_t kiln_entries = 0, torch_entries = 0;
      for (const auto& [name, t] : opt->state_tensors()) {
        if (name.rfind("state.", 0) != 0) continue;
        ++kiln_entries;
        const size_t dot = name.find('.', 6);
        const std::string key = prefix + "state" + name.substr(6, dot - 6) + name.substr(dot);
        expect_matches_torch(t.to_vector<double>(), key, 1e-10);
      }
      for (const auto& [key, v] : torch_)
        if (key.rfind(prefix + "state", 0) == 0) ++torch_entries;
      EXPECT_EQ(kiln_entries, torch_entries) << prefix;
    }
  }
  std::printf("optimizers vs PyTorch (f64): worst relative difference %.3g (tolerance 1e-10)\n",
              worst_rel_);
}

TEST_F(TorchParity, OneCycleLR) {
  for (const TorchOneCycleCase& c : onecycle_cases()) {
    auto s = make_lr_schedule("onecycle", c.options);
    std::vector<double> lrs;
    for (int64_t step = 0; step < c.options.total_steps; ++step) lrs.push_back(s->lr_at(step));
    expect_matches_torch(lrs, c.name + ".lr", 1e-12);
  }
  std::printf("OneCycleLR vs PyTorch: worst relative difference %.3g (tolerance 1e-12)\n",
              worst_rel_);
}

}  // namespace
}  // namespace kiln
