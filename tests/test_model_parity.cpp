// Parity with PyTorch 1.13 (Debian's python3-torch) for whole training steps: AdamW steps of the
// MLP and SGD-with-momentum steps of LeNet, as llm.c's test_gpt2 compares a training step with
// the PyTorch reference. kiln builds the model, writes its initial state_dict and a fixed batch
// as .npy; tests/parity/model_step.py loads them into the same architecture in torch.nn and runs
// three steps on that batch in float32 (and in float64, the exact result); kiln runs them in
// float32 and compares, at every step:
//   loss                  within 1e-5, relative
//   every gradient        within 1e-5, relative to the tensor's largest |entry|
//   every updated weight  within 1e-5, absolute
// For the weights to be comparable step after step, kiln's optimizer is given PyTorch's
// gradient of the step (once kiln's own has been compared), so both optimizers see the same
// numbers. Why: Adam divides by sqrt(v) + eps, so where a gradient is near eps = 1e-8 (an
// entry that is ~0 up to rounding) float32 rounding of the gradient moves that weight by up to
// lr: on this batch PyTorch float32's own first AdamW step is 2.2e-5 away from PyTorch
// float64's, at an entry whose exact gradient is -9.7e-11. The first step with kiln's own
// gradients is checked too, end to end, against the exact (float64) step: within 1e-5 plus
// PyTorch float32's own distance from it.
// The worst error of each tensor at each step is printed, for the logs.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "models/registry.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tests/npy.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using kiln::testing::NpyArray;
using kiln::testing::read_npy;
using kiln::testing::write_npy;

const std::string& kPython = testing::kSystemPython;
constexpr double kTolerance = 1e-5;

// One parity run: a model, an optimizer over all its parameters in one group, and its settings
// (passed to the reference script, so they live only here).
struct StepCase {
  models::ModelSpec spec;
  std::string optimizer;  // "adamw" or "sgd"
  double lr, weight_decay, momentum = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int steps = 3;
};

std::unique_ptr<Optimizer> make_optimizer(const StepCase& c, const std::vector<Tensor>& params) {
  // One group holding every parameter, biases included, as torch.optim does given a plain
  // parameter list (not make_param_groups, which exempts biases from decay).
  std::vector<ParamGroup> groups = {ParamGroup{.params = params, .weight_decay = c.weight_decay}};
  if (c.optimizer == "adamw")
    return std::make_unique<AdamW>(
        groups, OptimizerOptions{.lr = c.lr, .beta1 = c.beta1, .beta2 = c.beta2, .eps = c.eps});
  return std::make_unique<SGD>(groups, OptimizerOptions{.lr = c.lr, .momentum = c.momentum});
}

// The largest |actual - expected| (the first one, and any NaN, wins), where it is, and the
// largest |expected|.
struct Diff {
  double max_err = 0, scale = 0;
  size_t worst_at = 0;
  double actual = 0, expected = 0;
};

Diff diff(const Tensor& actual, const NpyArray& expected) {
  const std::vector<double> a = actual.to_vector<double>();
  Diff d;
  d.max_err = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    d.scale = std::max(d.scale, std::abs(expected.values[i]));
    const double e = std::abs(a[i] - expected.values[i]);
    if (!(e <= d.max_err)) {  // also catches NaN
      d.max_err = e;
      d.worst_at = i;
      d.actual = a[i];
      d.expected = expected.values[i];
    }
  }
  return d;
}

std::string shell_quote(const std::string& s) { return "'" + s + "'"; }

class ModelParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_reason_ = testing::python_unavailable(kPython, "torch, numpy");
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    dir_ = testing::make_temp_dir("kiln_model_parity_");
    ASSERT_FALSE(dir_.empty()) << "cannot make a temporary directory";
  }

  void TearDown() override { testing::remove_temp_dir_unless_failed(dir_); }

  // The model, its initial weights and one batch, all f32 and drawn from one seed, so two
  // calls give identical setups.
  struct Setup {
    std::shared_ptr<nn::Module> model;
    Tensor x, targets;
  };
  static Setup make_setup(const StepCase& c) {
    Generator gen(20240611);
    Setup s{models::make_model(c.spec, &gen), Tensor(), Tensor()};
    s.model->train();
    s.x = randn({16, 1, 28, 28}, {}, &gen);
    s.targets = randint(0, 10, {16}, {.dtype = DType::i64}, &gen);
    return s;
  }

  // "f32.step2.grad.1.weight.npy", as model_step.py names its results.
  NpyArray reference(const char* dt, int step, const std::string& what) const {
    return read_npy(dir_ / (std::string(dt) + ".step" + std::to_string(step) + "." + what + ".npy"));
  }

  void check(const StepCase& c) {
    const fs::path script = testing::parity_script("model_step.py");
    ASSERT_TRUE(fs::exists(script)) << "reference script " << script << " not found (set KILN_SOURCE_DIR)";

    Setup setup = make_setup(c);
    for (const auto& [key, t] : setup.model->state_dict()) {
      ASSERT_EQ(t.dtype(), DType::f32) << key;
      write_npy(dir_ / ("init." + key + ".npy"), t);
    }
    write_npy(dir_ / "x.npy", setup.x);
    write_npy(dir_ / "targets.npy", setup.targets);

    std::ostringstream cmd;
    cmd.precision(17);
    cmd << kPython << " " << shell_quote(script.string()) << " " << shell_quote(dir_.string())
        << " --model " << c.spec.name << " --optimizer " << c.optimizer << " --steps " << c.steps
        << " --lr " << c.lr << " --weight-decay " << c.weight_decay << " --momentum " << c.momentum
        << " --betas " << c.beta1 << " " << c.beta2 << " --eps " << c.eps;
    const testing::CommandResult r = testing::run_command(cmd.str() + " 2>&1");
    ASSERT_TRUE(r.ok) << r.failure;
    std::cout << r.output;

    // ---- c.steps steps: kiln's loss and gradients, then the step from PyTorch's gradients.
    nn::Module& model = *setup.model;
    const nn::NamedTensors params = model.named_parameters();
    auto opt = make_optimizer(c, model.parameters());
    std::vector<double> loss_err;
    std::map<std::string, std::vector<double>> grad_err, param_err;
    for (int s = 1; s <= c.steps; ++s) {
      const std::string step = "step" + std::to_string(s);
      opt->zero_grad();
      Tensor loss = cross_entropy(model(setup.x), setup.targets);
      loss.backward();

      const double ref_loss = reference("f32", s, "loss").values.at(0);
      loss_err.push_back(std::abs(loss.item() - ref_loss) / std::abs(ref_loss));
      EXPECT_LE(loss_err.back(), kTolerance)
          << step << " loss: kiln " << loss.item() << ", PyTorch " << ref_loss;

      for (const auto& [key, p] : params) {
        ASSERT_TRUE(p.grad().defined()) << step << " " << key << ": kiln computed no gradient";
        const NpyArray ref = reference("f32", s, "grad." + key);
        ASSERT_EQ(p.grad().shape(), ref.shape) << step << " " << key;
        const Diff d = diff(p.grad(), ref);
        grad_err[key].push_back(d.max_err / std::max(d.scale, 1e-30));
        EXPECT_LE(grad_err[key].back(), kTolerance)
            << step << " grad " << key << ": worst at element " << d.worst_at << " (kiln " << d.actual
            << ", PyTorch " << d.expected << "; largest |PyTorch| " << d.scale << ")";
        std::vector<float> g(ref.values.begin(), ref.values.end());  // exactly PyTorch's f32 values
        p.set_grad(from_vector(g, ref.shape));
      }

      opt->step();

      for (const auto& [key, p] : params) {
        const NpyArray ref = reference("f32", s, "param." + key);
        ASSERT_EQ(p.shape(), ref.shape) << step << " " << key;
        const Diff d = diff(p, ref);
        param_err[key].push_back(d.max_err);
        EXPECT_LE(d.max_err, kTolerance) << step << " weight " << key << ": worst at element "
                                         << d.worst_at << " (kiln " << d.actual << ", PyTorch "
                                         << d.expected << ")";
      }
    }

    // ---- step 1 end to end: kiln's own gradients through kiln's optimizer.
    Setup own = make_setup(c);
    auto own_opt = make_optimizer(c, own.model->parameters());
    cross_entropy((*own.model)(own.x), own.targets).backward();
    own_opt->step();
    struct EndToEnd {
      double vs_f32, vs_f64, f32_vs_f64;
    };
    std::vector<std::pair<std::string, EndToEnd>> end_to_end;
    for (const auto& [key, p] : own.model->named_parameters()) {
      const NpyArray f32 = reference("f32", 1, "param." + key), f64 = reference("f64", 1, "param." + key);
      ASSERT_EQ(p.shape(), f32.shape) << key;
      const double vs_f32 = diff(p, f32).max_err, vs_f64 = diff(p, f64).max_err;
      double f32_vs_f64 = 0;
      for (size_t i = 0; i < f32.values.size(); ++i)
        f32_vs_f64 = std::max(f32_vs_f64, std::abs(f32.values[i] - f64.values[i]));
      end_to_end.emplace_back(key, EndToEnd{vs_f32, vs_f64, f32_vs_f64});
      EXPECT_LE(vs_f64, kTolerance + f32_vs_f64)
          << "step 1 end to end, weight " << key << ": kiln is " << vs_f64 << " from the exact step, "
          << "PyTorch float32 " << f32_vs_f64;
    }

    // ---- the tables the closing notes quote.
    std::printf("kiln vs PyTorch float32: %s + %s, %d steps on one batch of 16, worst error per step "
                "(tolerance %.0e)\n", c.spec.name.c_str(), c.optimizer.c_str(), c.steps, kTolerance);
    auto row = [&](const std::string& label, const std::vector<double>& errs) {
      std::printf("  %-30s", label.c_str());
      for (double e : errs) std::printf(" %9.2e", e);
      std::printf("\n");
    };
    row("loss (relative)", loss_err);
    for (const auto& [key, p] : params) row("grad " + key + " (rel. to max)", grad_err[key]);
    for (const auto& [key, p] : params) row("weight " + key + " (absolute)", param_err[key]);
    auto worst = [](const std::map<std::string, std::vector<double>>& errs) {
      double w = 0;
      for (const auto& [key, e] : errs) w = std::max(w, *std::max_element(e.begin(), e.end()));
      return w;
    };
    std::printf("  worst: loss %.2e, gradients %.2e, weights %.2e\n",
                *std::max_element(loss_err.begin(), loss_err.end()), worst(grad_err), worst(param_err));
    std::printf("step 1 end to end (kiln's own gradients), worst absolute weight error:\n"
                "  %-12s %16s %16s %18s\n", "", "kiln-torch f32", "kiln-torch f64", "torch f32-f64");
    for (const auto& [key, e] : end_to_end)
      std::printf("  %-12s %16.2e %16.2e %18.2e\n", key.c_str(), e.vs_f32, e.vs_f64, e.f32_vs_f64);
  }

  static inline std::string skip_reason_;
  fs::path dir_;
};

TEST_F(ModelParity, MlpAdamW) {
  StepCase c{.spec = models::ModelSpec{}, .optimizer = "adamw", .lr = 1e-3, .weight_decay = 0.01};
  ASSERT_EQ(c.spec.name, "mlp");
  ASSERT_EQ(c.spec.hidden_sizes, (std::vector<int64_t>{512, 512}));  // 784-512-512-10
  check(c);
}

TEST_F(ModelParity, LenetSgdMomentum) {
  models::ModelSpec lenet;  // LeNet-5: conv 6, conv 16, fc 120, fc 84, fc 10
  lenet.name = "lenet";
  lenet.channels = {6, 16};
  lenet.hidden_sizes = {120, 84};
  check(StepCase{.spec = lenet, .optimizer = "sgd", .lr = 0.1, .weight_decay = 5e-4, .momentum = 0.9});
}

}  // namespace
}  // namespace kiln
