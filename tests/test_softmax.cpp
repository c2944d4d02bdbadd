// softmax, log_softmax and cross_entropy on the CPU: values against formulas written out in
// this file (every dim of a 3-D tensor, transposed inputs), numeric stability with logits of
// +-1e4, cross-entropy's ignore_index, label smoothing, reductions and [N, C, d...] layout
// against -sum(q * log p) computed by hand, argument errors, and gradients by finite
// differences in f64.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using testing::rand_input;
using testing::uniform_values;

Tensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f32) {
  return from_vector(v, shape, {.dtype = dtype});
}

Tensor targets_of(const std::vector<int64_t>& t, const Shape& shape) { return from_vector(t, shape); }

// Reference softmax of row-major values of `shape` along `dim`, in double.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& shape, int64_t dim, bool log) {
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (size_t d = dim + 1; d < shape.size(); ++d) inner *= shape[d];
  const int64_t classes = shape[dim];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t c) { return (o * classes + c) * inner + i; };
      double m = -std::numeric_limits<double>::infinity(), s = 0;
      for (int64_t c = 0; c < classes; ++c) m = std::max(m, x[at(c)]);
      for (int64_t c = 0; c < classes; ++c) s += std::exp(x[at(c)] - m);
      for (int64_t c = 0; c < classes; ++c)
        y[at(c)] = log ? x[at(c)] - m - std::log(s) : std::exp(x[at(c)] - m) / s;
    }
  }
  return y;
}

void expect_values(const Tensor& got, const std::vector<double>& want, double tol,
                   const std::string& what) {
  const std::vector<double> g = got.to_vector<double>();
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(g[i])) << what << " element " << i;
      continue;
    }
    EXPECT_NEAR(g[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << what << " element " << i;
  }
}

// -sum_c q_c log p_c with q = (1 - e) onehot(t) + e / C: the cross-entropy of one row,
// written from its definition rather than from the kernel's (lse - x) form.
double ref_row_loss(const std::vector<double>& row, int64_t target, double e) {
  const int64_t classes = static_cast<int64_t>(row.size());
  const std::vector<double> logp = ref_softmax(row, {classes}, 0, /*log=*/true);
  double loss = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const double q = (c == target ? 1.0 - e : 0.0) + e / classes;
    loss -= q * logp[c];
  }
  return loss;
}

// ---------------------------------------------------------------- softmax
TEST(Softmax, MatchesFormulaOnEveryDim) {
  const Shape shape = {3, 4, 5};
  const std::vector<double> v = uniform_values(60, -3, 3, 1);
  for (DType dtype : {DType::f32, DType::f64}) {
    const Tensor x = tensor(v, shape, dtype);
    const std::vector<double> xv = x.to_vector<double>();
    const double tol = dtype == DType::f32 ? 1e-6 : 1e-13;
    for (int64_t dim : {0, 1, 2, -1, -3}) {
      const int64_t d = dim < 0 ? dim + 3 : dim;
      const Tensor y = softmax(x, dim), ly = log_softmax(x, dim);
      EXPECT_EQ(y.dtype(), dtype);
      EXPECT_EQ(y.shape(), shape);
      expect_values(y, ref_softmax(xv, shape, d, false), tol, "softmax dim " + std::to_string(dim));
      expect_values(ly, ref_softmax(xv, shape, d, true), tol, "log_softmax dim " + std::to_string(dim));
    }
  }
}

TEST(Softmax, NonContiguousInput) {
  const std::vector<double> v = uniform_values(6 * 7, -2, 2, 2);
  const Tensor base = tensor(v, {6, 7}, DType::f64);
  const Tensor xt = base.t();  // [7, 6]
  const std::vector<double> xv = xt.to_vector<double>();
  for (int64_t dim : {0, 1}) {
    expect_values(softmax(xt, dim), ref_softmax(xv, {7, 6}, dim, false), 1e-13, "softmax of t()");
    expect_values(log_softmax(xt, dim), ref_softmax(xv, {7, 6}, dim, true), 1e-13, "log_softmax of t()");
  }
  const Tensor sliced = base.slice(1, 0, 7, 3);  // [6, 3]
  expect_values(softmax(sliced, 1), ref_softmax(sliced.to_vector<double>(), {6, 3}, 1, false), 1e-13,
                "softmax of a slice");
}

TEST(Softmax, LongRowsAndBf16) {
  const int64_t classes = 50257;
  const std::vector<double> v = uniform_values(2 * classes, -8, 8, 3);
  const Tensor x = tensor(v, {2, classes});
  const std::vector<double> xv = x.to_vector<double>();
  expect_values(softmax(x, 1), ref_softmax(xv, {2, classes}, 1, false), 1e-6, "softmax 50257");
  expect_values(log_softmax(x, 1), ref_softmax(xv, {2, classes}, 1, true), 1e-6, "log_softmax 50257");
  // bf16 in, bf16 out, computed in f32: within one bf16 rounding of the exact value.
  const Tensor xb = tensor(uniform_values(4 * 9, -3, 3, 4), {4, 9}, DType::bf16);
  const Tensor yb = softmax(xb, 1);
  EXPECT_EQ(yb.dtype(), DType::bf16);
  const std::vector<double> want = ref_softmax(xb.to_vector<double>(), {4, 9}, 1, false);
  const std::vector<double> got = yb.to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 5e-3 * want[i]) << i;  // half a bf16 ulp: 2^-8
}

TEST(Softmax, StableForHugeLogits) {
  const Tensor x = tensor({1e4, -1e4, 0, 1e4, -1e4, -1e4}, {2, 3});
  const std::vector<double> y = softmax(x, 1).to_vector<double>();
  EXPECT_EQ(y, std::vector<double>({1, 0, 0, 1, 0, 0}));
  const std::vector<double> ly = log_softmax(x, 1).to_vector<double>();
  for (double v : ly) EXPECT_TRUE(std::isfinite(v)) << v;
  EXPECT_DOUBLE_EQ(ly[0], 0);
  EXPECT_NEAR(ly[1], -2e4, 1e-2);
  EXPECT_NEAR(ly[4], -2e4, 1e-2);
  const Tensor tie = tensor({1e4, 1e4, -1e4}, {3});
  EXPECT_EQ(softmax(tie, 0).to_vector<double>(), std::vector<double>({0.5, 0.5, 0}));
  EXPECT_NEAR(log_softmax(tie, 0).to_vector<double>()[1], -std::log(2.0), 1e-6);
}

TEST(Softmax, ScalarAndErrors) {
  EXPECT_DOUBLE_EQ(softmax(scalar_tensor(5.0), 0).item(), 1.0);
  EXPECT_DOUBLE_EQ(log_softmax(scalar_tensor(5.0), -1).item(), 0.0);
  EXPECT_THROW(softmax(zeros({2, 3}), 2), Error);
  EXPECT_THROW(softmax(from_vector(std::vector<int64_t>{1, 2}, {2}), 0), Error);
}

TEST(SoftmaxGrad, Gradcheck) {
  const Tensor x = rand_input({3, 4}, -2, 2, 21);
  const Tensor x3 = rand_input({2, 3, 4}, -2, 2, 22);
  EXPECT_GRADCHECK([](auto& in) { return softmax(in[0], 1); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return softmax(in[0], 0); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return log_softmax(in[0], -1); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return log_softmax(in[0], 0); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return softmax(in[0], 1); }, {x3});      // inner > 1
  EXPECT_GRADCHECK([](auto& in) { return log_softmax(in[0], 1); }, {x3});
  EXPECT_GRADCHECK([](auto& in) { return softmax(in[0].t(), 1); }, {x});   // non-contiguous
  EXPECT_GRADCHECK([](auto& in) { return log_softmax(in[0].t(), 0); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return softmax(in[0].permute({2, 0, 1}), -1); }, {x3});
}

// ---------------------------------------------------------------- cross-entropy
struct CrossEntropyCase {
  std::vector<double> logits;  // [4, 5]
  std::vector<int64_t> targets;
};

CrossEntropyCase ce_case() {
  return {uniform_values(20, -3, 3, 5), {2, -100, 0, 4}};
}

TEST(CrossEntropy, MatchesHandComputedLossWithIgnoreAndSmoothing) {
  const CrossEntropyCase c = ce_case();
  const Tensor logits = tensor(c.logits, {4, 5}, DType::f64);
  const Tensor targets = targets_of(c.targets, {4});
  for (double e : {0.0, 0.1, 1.0}) {
    std::vector<double> rows(4, 0.0);
    double total = 0;
    for (int64_t n = 0; n < 4; ++n) {
      if (c.targets[n] == -100) continue;
      const std::vector<double> row(c.logits.begin() + n * 5, c.logits.begin() + n * 5 + 5);
      rows[n] = ref_row_loss(row, c.targets[n], e);
      total += rows[n];
    }
    const std::string what = "label_smoothing " + std::to_string(e);
    const Tensor none = cross_entropy(logits, targets, -100, Reduction::none, e);
    EXPECT_EQ(none.shape(), Shape({4}));
    expect_values(none, rows, 1e-12, what + " none");
    EXPECT_NEAR(cross_entropy(logits, targets, -100, Reduction::sum, e).item(), total, 1e-12) << what;
    // mean divides by the 3 counted targets, not by 4.
    EXPECT_NEAR(cross_entropy(logits, targets, -100, Reduction::mean, e).item(), total / 3, 1e-12) << what;
  }
}

TEST(CrossEntropy, IgnoreIndexInsideTheClassRange) {
  const CrossEntropyCase c = ce_case();
  const Tensor logits = tensor(c.logits, {4, 5}, DType::f64);
  const Tensor targets = targets_of({2, 0, 0, 4}, {4});
  double total = 0;
  for (int64_t n : {0, 3}) {
    const std::vector<double> row(c.logits.begin() + n * 5, c.logits.begin() + n * 5 + 5);
    total += ref_row_loss(row, n == 0 ? 2 : 4, 0.0);
  }
  EXPECT_NEAR(cross_entropy(logits, targets, /*ignore_index=*/0).item(), total / 2, 1e-12);
  // Every target ignored: mean is 0/0 = NaN (like PyTorch), sum is 0.
  const Tensor all_ignored = targets_of({-100, -100}, {2});
  EXPECT_TRUE(std::isnan(cross_entropy(logits.narrow(0, 0, 2), all_ignored).item()));
  EXPECT_EQ(cross_entropy(logits.narrow(0, 0, 2), all_ignored, -100, Reduction::sum).item(), 0.0);
}

TEST(CrossEntropy, SpatialLayoutMovesClassesLast) {
  // logits [N=2, C=3, 4, 2], targets [2, 4, 2]: loss at (n, i, j) uses logits[n, :, i, j].
  const std::vector<double> v = uniform_values(2 * 3 * 4 * 2, -2, 2, 6);
  const Tensor logits = tensor(v, {2, 3, 4, 2}, DType::f64);
  std::vector<int64_t> t(16);
  for (int64_t k = 0; k < 16; ++k) t[k] = k % 5 == 4 ? -100 : k % 3;
  const Tensor targets = targets_of(t, {2, 4, 2});
  const Tensor none = cross_entropy(logits, targets, -100, Reduction::none, 0.2);
  EXPECT_EQ(none.shape(), Shape({2, 4, 2}));
  std::vector<double> want(16, 0.0);
  double total = 0;
  int64_t counted = 0;
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t p = 0; p < 8; ++p) {
      const int64_t k = n * 8 + p;
      if (t[k] == -100) continue;
      std::vector<double> row(3);
      for (int64_t c = 0; c < 3; ++c) row[c] = v[(n * 3 + c) * 8 + p];
      want[k] = ref_row_loss(row, t[k], 0.2);
      total += want[k];
      ++counted;
    }
  }
  expect_values(none, want, 1e-12, "[N, C, d1, d2]");
  EXPECT_NEAR(cross_entropy(logits, targets, -100, Reduction::mean, 0.2).item(), total / counted, 1e-12);
}

TEST(CrossEntropy, UnbatchedI32TargetsAndDtypes) {
  const CrossEntropyCase c = ce_case();
  const std::vector<double> row(c.logits.begin(), c.logits.begin() + 5);
  const Tensor one = cross_entropy(tensor(row, {5}, DType::f64), targets_of({3}, {}));
  EXPECT_EQ(one.dim(), 0);
  EXPECT_NEAR(one.item(), ref_row_loss(row, 3, 0.0), 1e-12);

  const Tensor logits = tensor(c.logits, {4, 5});
  const Tensor t64 = targets_of(c.targets, {4});
  const Tensor loss64 = cross_entropy(logits, t64, -100, Reduction::none, 0.1);
  const Tensor loss32 = cross_entropy(logits, t64.to(DType::i32), -100, Reduction::none, 0.1);
  EXPECT_EQ(loss32.to_vector<double>(), loss64.to_vector<double>());
  EXPECT_EQ(loss64.dtype(), DType::f32);
  const Tensor lb = cross_entropy(logits.to(DType::bf16), t64);
  EXPECT_EQ(lb.dtype(), DType::bf16);  // the logits' dtype, as in PyTorch
  EXPECT_NEAR(lb.item(), cross_entropy(logits.to(DType::bf16).to(DType::f32), t64).item(), 2e-2);
}

TEST(CrossEntropy, StableForHugeLogits) {
  const Tensor logits = tensor({1e4, -1e4, 0, -1e4, 1e4, -1e4}, {2, 3});
  const Tensor targets = targets_of({1, 1}, {2});
  for (double e : {0.0, 0.1}) {
    Tensor x = logits.detach().requires_grad_(true);
    const Tensor none = cross_entropy(x, targets, -100, Reduction::none, e);
    const std::vector<double> l = none.to_vector<double>();
    EXPECT_NEAR(l[0], (1 - e) * 2e4 + e * 1e4, 1) << e;  // lse = 1e4, mean logit 0
    EXPECT_NEAR(l[1], e * (1e4 + 1e4 / 3.0), 1) << e;  // nll 0, mean logit -1e4/3
    cross_entropy(x, targets, -100, Reduction::mean, e).backward();
    for (double g : x.grad().to_vector<double>()) EXPECT_TRUE(std::isfinite(g)) << g;
  }
}

TEST(CrossEntropy, Errors) {
  const Tensor logits = zeros({3, 4});
  EXPECT_THROW(cross_entropy(logits, targets_of({0, 4, 1}, {3})), Error);    // 4 >= C
  EXPECT_THROW(cross_entropy(logits, targets_of({0, -1, 1}, {3})), Error);   // negative
  EXPECT_THROW(cross_entropy(logits, targets_of({0, 1}, {2})), Error);       // shape
  EXPECT_THROW(cross_entropy(logits, zeros({3})), Error);                    // float targets
  EXPECT_THROW(cross_entropy(logits, targets_of({0, 1, 2}, {3}), -100, Reduction::mean, 1.5), Error);
  EXPECT_THROW(cross_entropy(from_vector(std::vector<int64_t>{1, 2, 3}, {1, 3}), targets_of({0}, {1})), Error);
}

TEST(CrossEntropyGrad, GradientIsSoftmaxMinusTargetOverCount) {
  const CrossEntropyCase c = ce_case();
  Tensor logits = tensor(c.logits, {4, 5}, DType::f64).requires_grad_(true);
  cross_entropy(logits, targets_of(c.targets, {4})).backward();
  const std::vector<double> g = logits.grad().to_vector<double>();
  for (int64_t n = 0; n < 4; ++n) {
    const std::vector<double> row(c.logits.begin() + n * 5, c.logits.begin() + n * 5 + 5);
    const std::vector<double> p = ref_softmax(row, {5}, 0, false);
    for (int64_t k = 0; k < 5; ++k) {
      const double want = c.targets[n] == -100 ? 0.0 : (p[k] - (k == c.targets[n] ? 1.0 : 0.0)) / 3;
      EXPECT_NEAR(g[n * 5 + k], want, 1e-14) << "row " << n << " class " << k;
    }
  }
}

TEST(CrossEntropyGrad, Gradcheck) {
  const Tensor logits = rand_input({4, 5}, -3, 3, 31);
  const Tensor targets = targets_of({2, -100, 0, 4}, {4});
  for (Reduction r : {Reduction::none, Reduction::mean, Reduction::sum}) {
    for (double e : {0.0, 0.15}) {
      EXPECT_GRADCHECK([&](auto& in) { return cross_entropy(in[0], targets, -100, r, e); }, {logits});
    }
  }
  // Non-contiguous logits: the transpose of [C, N].
  const Tensor cn = rand_input({5, 4}, -3, 3, 32);
  EXPECT_GRADCHECK([&](auto& in) { return cross_entropy(in[0].t(), targets, -100, Reduction::mean, 0.1); },
                   {cn});
  // [N, C, d] layout.
  const Tensor spatial = rand_input({2, 3, 4}, -3, 3, 33);
  const Tensor st = targets_of({0, 1, 2, -100, 2, 2, 1, 0}, {2, 4});
  EXPECT_GRADCHECK([&](auto& in) { return cross_entropy(in[0], st, -100, Reduction::mean, 0.1); },
                   {spatial});
  EXPECT_GRADCHECK([&](auto& in) { return cross_entropy(in[0], st, -100, Reduction::none); }, {spatial});
}

}  // namespace
}  // namespace kiln
