// Parity with PyTorch (Debian's python3-torch), as llm.c's test_gpt2 does: a small MLP with a
// cross-entropy loss and a few side terms, run in kiln and, on the same inputs, in
// tests/parity/mlp_ce.py. The loss and the gradient of every input must agree, in f64 to
// 1e-10 and in f32 to 1e-5 (relative to each tensor's largest entry).
//
// Inputs and results travel as .npy files (numpy reads and writes them natively), through a
// fresh temporary directory.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "tests/npy.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using kiln::testing::NpyArray;
using kiln::testing::read_npy;
using kiln::testing::write_npy;

const std::string& kPython = testing::kSystemPython;
const char* const kInputNames[] = {"x", "W1", "b1", "W2", "b2"};
constexpr int kNumInputs = 5;

// ---------------------------------------------------------------- the model

// One graph, many ops: matmul, broadcast add, gelu (tanh), tanh, sigmoid, relu, cross-entropy
// with an ignored row, softmax, log_softmax, sums and means over dims, square, sqrt, div.
// Keep in step with forward() in tests/parity/mlp_ce.py.
Tensor kiln_forward(const std::vector<Tensor>& p, const Tensor& targets) {
  const Tensor &x = p[0], &W1 = p[1], &b1 = p[2], &W2 = p[3], &b2 = p[4];
  Tensor z1 = matmul(x, W1) + b1;
  Tensor h = gelu(z1);
  Tensor h2 = tanh(h) * sigmoid(h) + 0.1 * relu(z1);
  Tensor logits = matmul(h2, W2) + b2;
  Tensor ce = cross_entropy(logits, targets, /*ignore_index=*/-100, Reduction::mean);
  Tensor entropy = -mean(sum(softmax(logits, 1) * log_softmax(logits, 1), {1}));
  Tensor centered = h2 - mean(h2, {1}, /*keepdim=*/true);
  return ce + 0.01 * sum(W1 * W1) + 0.1 * entropy + 0.05 * mean(square(centered)) +
         0.01 * mean(h2 / sqrt(z1 * z1 + 1.0));
}

// max |actual - expected| relative to max |expected|; names the worst element on failure.
// The worst relative error seen in each check, printed at the end for the logs.
::testing::AssertionResult close_to(const std::string& what, const Tensor& actual,
                                    const NpyArray& expected, double tol, double* worst_rel) {
  if (!actual.defined())
    return ::testing::AssertionFailure() << what << ": kiln computed no value";
  if (actual.shape() != expected.shape)
    return ::testing::AssertionFailure() << what << ": kiln " << actual.meta_str()
                                         << " but PyTorch " << shape_str(expected.shape);
  const std::vector<double> a = actual.to_vector<double>();
  double scale = 0, worst = -1;
  size_t worst_at = 0;
  for (double v : expected.values) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - expected.values[i]);
    if (!(d <= worst)) {  // also catches NaN
      worst = d;
      worst_at = i;
    }
  }
  const double rel = worst / std::max(scale, 1e-300);
  *worst_rel = std::max(*worst_rel, rel);
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": relative error " << rel << " > " << tol << " at element " << worst_at
         << " (kiln " << a[worst_at] << ", PyTorch " << expected.values[worst_at]
         << "; largest |PyTorch| " << scale << ")";
}

// ---------------------------------------------------------------- the test

class ParityTorch : public ::testing::Test {
 protected:
  // Writes the inputs and runs the reference once for both dtypes.
  static void SetUpTestSuite() {
    skip_reason_ = testing::python_unavailable(kPython, "torch, numpy");
    if (!skip_reason_.empty()) return;
    const fs::path script = testing::parity_script("mlp_ce.py");
    if (!fs::exists(script)) {
      failure_ = "reference script " + script.string() + " not found (set KILN_SOURCE_DIR)";
      return;
    }
    dir_ = testing::make_temp_dir("kiln_parity_").string();
    if (dir_.empty()) {
      failure_ = "cannot make a temporary directory";
      return;
    }

    // Deterministic inputs, scaled like a default init so every activation is in range.
    Generator gen(20240611);
    const TensorOptions f64{.dtype = DType::f64};
    inputs_ = {randn({8, 20}, f64, &gen), randn({20, 32}, f64, &gen) * (1.0 / std::sqrt(20.0)),
               randn({32}, f64, &gen) * 0.1, randn({32, 10}, f64, &gen) * (1.0 / std::sqrt(32.0)),
               randn({10}, f64, &gen) * 0.1};
    std::vector<int64_t> t = randint(0, 10, {8}, {.dtype = DType::i64}, &gen).to_vector<int64_t>();
    t[3] = -100;  // an ignored row: it must not count in the mean
    targets_ = from_vector(t, {8});
    for (int i = 0; i < kNumInputs; ++i)
      write_npy(fs::path(dir_) / (std::string(kInputNames[i]) + ".npy"), inputs_[i]);
    write_npy(fs::path(dir_) / "targets.npy", targets_);

    const testing::CommandResult r =
        testing::run_command(kPython + " '" + script.string() + "' '" + dir_ + "' 2>&1");
    if (!r.ok) failure_ = r.failure;
  }

  static void TearDownTestSuite() {
    inputs_.clear();
    targets_ = Tensor();
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  void check(DType dtype, const std::string& suffix, double tol) {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(failure_.empty()) << failure_;
    std::vector<Tensor> p;
    for (const Tensor& in : inputs_) p.push_back(in.to(dtype).clone().requires_grad_());
    Tensor loss = kiln_forward(p, targets_);
    ASSERT_EQ(loss.dtype(), dtype);
    ASSERT_EQ(loss.dim(), 0);
    loss.backward();

    const fs::path dir(dir_);
    double worst = 0;
    EXPECT_TRUE(close_to("loss", loss, read_npy(dir / ("loss_" + suffix + ".npy")), tol, &worst));
    for (int i = 0; i < kNumInputs; ++i) {
      const std::string name = std::string("grad_") + kInputNames[i] + "_" + suffix;
      EXPECT_TRUE(close_to(name, p[i].grad(), read_npy(dir / (name + ".npy")), tol, &worst));
      if (p[i].grad().defined()) {
        EXPECT_EQ(p[i].grad().dtype(), dtype) << name;
      }
    }
    std::printf("kiln vs PyTorch (%s): loss %.10g, worst relative error %.3g (tolerance %.0e)\n",
                suffix.c_str(), loss.item(), worst, tol);
  }

  static inline std::string skip_reason_, failure_, dir_;
  static inline std::vector<Tensor> inputs_;
  static inline Tensor targets_;
};

TEST_F(ParityTorch, MlpCrossEntropyF64) { check(DType::f64, "f64", 1e-10); }

TEST_F(ParityTorch, MlpCrossEntropyF32) { check(DType::f32, "f32", 1e-5); }

// The .npy writer and reader (tests/npy.h) agree with each other (numpy itself is checked by the test above).
TEST(Npy, RoundTrip) {
  const fs::path path = fs::temp_directory_path() / ("kiln_npy_" + std::to_string(getpid()) + ".npy");
  const Tensor m = from_vector(std::vector<double>{1.5, -2, 3, 4e-300, 5, 6}, {2, 3},
                               {.dtype = DType::f64});
  write_npy(path, m);
  NpyArray a = read_npy(path);
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  EXPECT_EQ(a.values, m.to_vector<double>());
  EXPECT_EQ(fs::file_size(path) % 64, (6u * 8u) % 64);  // header padded to 64 bytes
  write_npy(path, from_vector(std::vector<int64_t>{-100, 7}, {2}));
  a = read_npy(path);
  EXPECT_EQ(a.shape, (Shape{2}));
  EXPECT_EQ(a.values, (std::vector<double>{-100, 7}));
  write_npy(path, from_vector(std::vector<float>{0.1f, -3.5f}, {1, 2}, {.dtype = DType::f32}));
  a = read_npy(path);
  EXPECT_EQ(a.shape, (Shape{1, 2}));
  EXPECT_EQ(a.values, (std::vector<double>{0.1f, -3.5f}));  // f32 values, exactly
  write_npy(path, scalar_tensor(2.25, {.dtype = DType::f64}));
  a = read_npy(path);
  EXPECT_TRUE(a.shape.empty());
  EXPECT_EQ(a.values, (std::vector<double>{2.25}));
  fs::remove(path);
}

}  // namespace
}  // namespace kiln
