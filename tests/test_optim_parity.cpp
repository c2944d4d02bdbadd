// SGD, Adam, AdamW and OneCycleLR against Debian's PyTorch 1.13 (tests/parity/optim_step.py)
// in f64: optimizers to 1e-10 relative, with two param groups and a parameter that misses a
// step; OneCycleLR to 1e-12. Skips when /usr/bin/python3 cannot import torch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "optim/adam.h"
#include "optim/lr_schedule.h"
#include "optim/param_groups.h"
#include "optim/registry.h"
#include "optim/sgd.h"
#include "tests/gradcheck.h"
#include "tests/optim_testing.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::param_of;
using testing::uniform_values;
using testing::values_tensor;

namespace fs = std::filesystem;

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
