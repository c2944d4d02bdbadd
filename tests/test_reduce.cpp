// Reductions on the CPU: sum, mean, max, min, var, argmax, argmin and sum_to against a naive
// grouping loop written in this file (dim sets such as {0, 2} on a 4-D tensor, negative dims,
// keepdim, transposed and sliced inputs), dtype rules (integer sums are i64), argmax ties,
// NaN and -inf rows, var's correction, long-row accuracy, gradients by finite differences in
// f64, and PyTorch's convention of sharing max/min gradients among ties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
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

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f32) {
  return from_vector(v, shape, {.dtype = dtype});
}

// ---- the reference: the input's elements grouped by output position, in input order
struct Groups {
  Shape shape;                              // the expected output shape
  std::vector<std::vector<double>> values;  // one group per output element, row-major
};

Groups group_by_output(const std::vector<double>& x, const Shape& shape, std::vector<int64_t> dims,
                       bool keepdim) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  std::vector<bool> reduced(nd, dims.empty());
  for (int64_t d : dims) reduced[(d + nd) % nd] = true;
  Groups g;
  int64_t outputs = 1;
  for (int64_t d = 0; d < nd; ++d) {
    if (!reduced[d]) outputs *= shape[d];
    if (!reduced[d]) g.shape.push_back(shape[d]);
    else if (keepdim) g.shape.push_back(1);
  }
  g.values.resize(outputs);
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i) {
    int64_t rest = i, key = 0, place = 1;
    for (int64_t d = nd - 1; d >= 0; --d) {
      const int64_t idx = rest % shape[d];
      rest /= shape[d];
      if (!reduced[d]) {
        key += idx * place;
        place *= shape[d];
      }
    }
    g.values[key].push_back(x[i]);
  }
  return g;
}

using GroupFn = std::function<double(const std::vector<double>&)>;

double ref_sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}
double ref_mean(const std::vector<double>& v) { return ref_sum(v) / static_cast<double>(v.size()); }
double ref_max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
double ref_min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
GroupFn ref_var(int64_t correction) {
  return [correction](const std::vector<double>& v) {
    const double m = ref_mean(v);
    double ss = 0;
    for (double x : v) ss += (x - m) * (x - m);
    return ss / static_cast<double>(static_cast<int64_t>(v.size()) - correction);
  };
}
double ref_argmax(const std::vector<double>& v) {
  return static_cast<double>(std::max_element(v.begin(), v.end()) - v.begin());  // first of ties
}
double ref_argmin(const std::vector<double>& v) {
  return static_cast<double>(std::min_element(v.begin(), v.end()) - v.begin());
}

void expect_reduction(const Tensor& got, const Groups& groups, const GroupFn& fn, double tol,
                      const std::string& what) {
  ASSERT_EQ(got.shape(), groups.shape) << what;
  const std::vector<double> g = got.to_vector<double>();
  ASSERT_EQ(g.size(), groups.values.size()) << what;
  for (size_t i = 0; i < g.size(); ++i) {
    const double want = fn(groups.values[i]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(g[i])) << what << " element " << i;
    } else {
      EXPECT_NEAR(g[i], want, tol * std::max(1.0, std::abs(want))) << what << " element " << i;
    }
  }
}

std::string dims_str(const std::vector<int64_t>& dims, bool keepdim) {
  std::string s = "dims {";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "}" + (keepdim ? " keepdim" : "");
}

// Every float reduction of `x` over `dims` against the grouping loop.
void check_all_reductions(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim,
                          double tol, const std::string& label) {
  const std::vector<double> v = x.to_vector<double>();  // row-major over the (view's) shape
  const Groups g = group_by_output(v, x.shape(), dims, keepdim);
  const std::string what = label + " " + dims_str(dims, keepdim);
  expect_reduction(sum(x, dims, keepdim), g, ref_sum, tol, "sum " + what);
  expect_reduction(mean(x, dims, keepdim), g, ref_mean, tol, "mean " + what);
  expect_reduction(max(x, dims, keepdim), g, ref_max, tol, "max " + what);
  expect_reduction(min(x, dims, keepdim), g, ref_min, tol, "min " + what);
  expect_reduction(var(x, dims, 1, keepdim), g, ref_var(1), tol, "var(correction 1) " + what);
  expect_reduction(var(x, dims, 0, keepdim), g, ref_var(0), tol, "var(correction 0) " + what);
  if (dims.size() == 1) {
    expect_reduction(argmax(x, dims[0], keepdim), g, ref_argmax, 0, "argmax " + what);
    expect_reduction(argmin(x, dims[0], keepdim), g, ref_argmin, 0, "argmin " + what);
  }
}

const std::vector<std::vector<int64_t>> kDimSets = {
    {}, {0}, {1}, {2}, {3}, {-1}, {-3}, {0, 2}, {1, 2}, {0, 3}, {1, 3}, {-3, -1}, {0, 1, 2, 3}, {2, 0}};

TEST(Reduce, MatchesNaiveLoopOn4DTensor) {
  for (DType dtype : {DType::f32, DType::f64}) {
    const Tensor x = tensor(uniform_values(2 * 3 * 4 * 5, -2, 2, 1), {2, 3, 4, 5}, dtype);
    for (const auto& dims : kDimSets)
      for (bool keepdim : {false, true})
        check_all_reductions(x, dims, keepdim, dtype == DType::f32 ? 1e-5 : 1e-12,
                             std::string(dtype_name(dtype)));
  }
}

TEST(Reduce, NonContiguousInputs) {
  const Tensor base = tensor(uniform_values(4 * 6 * 5, -2, 2, 2), {4, 6, 5}, DType::f64);
  const Tensor permuted = base.permute({2, 0, 1});        // [5, 4, 6], no dim contiguous
  const Tensor sliced = base.slice(1, 1, 6, 2);           // [4, 3, 5], a gap between rows
  const Tensor transposed = base.select(2, 3).t();        // [6, 4], strided
  for (const auto& dims : std::vector<std::vector<int64_t>>{{}, {0}, {1}, {2}, {0, 2}, {-1}}) {
    check_all_reductions(permuted, dims, false, 1e-12, "permuted");
    check_all_reductions(sliced, dims, true, 1e-12, "sliced");
  }
  for (const auto& dims : std::vector<std::vector<int64_t>>{{}, {0}, {1}})
    check_all_reductions(transposed, dims, false, 1e-12, "transposed");
}

TEST(Reduce, ColumnsAndLongRows) {
  // inner > 1 with a reduced range longer than one accumulation block, and size-1 dims.
  const Tensor cols = tensor(uniform_values(3 * 700 * 37, -1, 1, 3), {3, 700, 37}, DType::f64);
  check_all_reductions(cols, {1}, false, 1e-10, "columns");
  const Tensor ones_dims = tensor(uniform_values(3 * 1 * 4 * 1, -1, 1, 4), {3, 1, 4, 1}, DType::f64);
  for (const auto& dims : std::vector<std::vector<int64_t>>{{1}, {3}, {1, 3}, {0, 1}, {1, 2}, {0, 2}})
    check_all_reductions(ones_dims, dims, false, 1e-12, "size-1 dims");
}

TEST(Reduce, LongF32SumIsAccurate) {
  // One row of 2^20 + 5 values: split into chunks, each summed pairwise. A plain running
  // f32 sum would be off by ~1e-4 relative here.
  const int64_t n = (int64_t{1} << 20) + 5;
  const std::vector<double> v = uniform_values(n, 0, 1, 5);
  const Tensor x = tensor(v, {n});
  std::vector<double> rounded = x.to_vector<double>();  // what the f32 kernel sees
  const double want = ref_sum(rounded);
  EXPECT_NEAR(sum(x).item(), want, 1e-6 * want);
  EXPECT_NEAR(mean(x).item(), want / n, 1e-6 * want / n);
  const Tensor rows = x.narrow(0, 0, 1 << 20).view({4, 1 << 18});
  expect_reduction(sum(rows, {1}), group_by_output(rows.to_vector<double>(), {4, 1 << 18}, {1}, false),
                   ref_sum, 1e-6, "sum of 4 long rows");
}

TEST(Reduce, ScalarsAndEmptyDims) {
  const Tensor s = scalar_tensor(3.5);
  EXPECT_EQ(sum(s).dim(), 0);
  EXPECT_DOUBLE_EQ(sum(s).item(), 3.5);
  EXPECT_DOUBLE_EQ(sum(s, {0}).item(), 3.5);
  EXPECT_DOUBLE_EQ(max(s, {-1}).item(), 3.5);
  EXPECT_EQ(argmax(s, 0).item<int64_t>(), 0);
  // Summing an empty dim gives 0 (and mean NaN), as in PyTorch.
  const Tensor empty_rows = zeros({3, 0});
  EXPECT_EQ(sum(empty_rows, {1}).to_vector<double>(), std::vector<double>({0, 0, 0}));
  EXPECT_TRUE(std::isnan(mean(empty_rows, {1}).to_vector<double>()[0]));
  EXPECT_EQ(sum(empty_rows, {0}).shape(), Shape({0}));
}

TEST(Reduce, IntegerSumsCountInI64) {
  const std::vector<int64_t> v = {1, 0, 3, 4, 5, 6};
  for (DType dtype : {DType::i32, DType::i64, DType::u8, DType::b8}) {
    const Tensor x = from_vector(v, {2, 3}).to(dtype);
    const Tensor s = sum(x, {1});
    EXPECT_EQ(s.dtype(), DType::i64) << dtype;
    const std::vector<double> want = dtype == DType::b8 ? std::vector<double>{2, 3}
                                                        : std::vector<double>{4, 15};
    EXPECT_EQ(s.to_vector<double>(), want) << dtype;
  }
  EXPECT_EQ(sum(from_vector(std::vector<int64_t>{-5, 2}, {2}).to(DType::i32)).item<int64_t>(), -3);
  // Large values do not overflow a 32-bit accumulator.
  const Tensor big = full({4}, 2e9, {.dtype = DType::i32});
  EXPECT_EQ(sum(big).item<int64_t>(), int64_t{8'000'000'000});
  // max/min keep the integer dtype.
  const Tensor xi = from_vector(std::vector<int64_t>{1, -2, 3, 4, 5, 6}, {2, 3}).to(DType::i32);
  EXPECT_EQ(max(xi, {1}).dtype(), DType::i32);
  EXPECT_EQ(max(xi, {1}).to_vector<double>(), std::vector<double>({3, 6}));
  EXPECT_EQ(min(xi).item<int64_t>(), -2);
}

TEST(Reduce, ArgmaxTiesPickTheFirstIndex) {
  const Tensor x = tensor({1, 3, 3, 2, 5, 5, 5, 5, -1, -4, -4, 0}, {3, 4});
  EXPECT_EQ(argmax(x, 1).dtype(), DType::i64);
  EXPECT_EQ(argmax(x, 1).to_vector<int64_t>(), std::vector<int64_t>({1, 0, 3}));
  EXPECT_EQ(argmin(x, 1).to_vector<int64_t>(), std::vector<int64_t>({0, 0, 1}));
  EXPECT_EQ(argmax(x, 0).to_vector<int64_t>(), std::vector<int64_t>({1, 1, 1, 1}));
  EXPECT_EQ(argmax(x, -1, /*keepdim=*/true).shape(), Shape({3, 1}));
  // A long row split into chunks: ties across chunks still give the first index.
  std::vector<double> v(300'000, 0.0);
  v[150'001] = v[170'000] = v[299'999] = 2.0;
  v[5] = v[200'000] = -1.0;
  const Tensor row = tensor(v, {300'000});
  EXPECT_EQ(argmax(row, 0).item<int64_t>(), 150'001);
  EXPECT_EQ(argmin(row, 0).item<int64_t>(), 5);
  // Ties in integer and bool tensors.
  EXPECT_EQ(argmax(from_vector(std::vector<int64_t>{0, 7, 7}, {3}), 0).item<int64_t>(), 1);
  EXPECT_EQ(argmax(from_vector(std::vector<int64_t>{0, 1, 1}, {3}).to(DType::b8), 0).item<int64_t>(), 1);
}

TEST(Reduce, NaNAndInfinities) {
  const Tensor x = tensor({1, kNaN, 3, -kInf, -kInf, -kInf}, {2, 3});
  const std::vector<double> mx = max(x, {1}).to_vector<double>();
  EXPECT_TRUE(std::isnan(mx[0]));
  EXPECT_EQ(mx[1], -kInf);  // a row of -inf has max -inf
  EXPECT_EQ(argmax(x, 1).to_vector<int64_t>(), std::vector<int64_t>({1, 0}));
  EXPECT_EQ(argmin(x, 1).to_vector<int64_t>(), std::vector<int64_t>({1, 0}));
  EXPECT_TRUE(std::isnan(min(x).item()));
  EXPECT_TRUE(std::isnan(sum(x, {1}).to_vector<double>()[0]));
}

TEST(Reduce, VarCorrection) {
  const Tensor x = tensor({1, 2, 3, 4}, {4});
  EXPECT_NEAR(var(x).item(), 5.0 / 3.0, 1e-6);  // unbiased by default
  EXPECT_NEAR(var(x, {}, 0).item(), 1.25, 1e-6);
  EXPECT_NEAR(var(x, {0}, 2).item(), 2.5, 1e-6);
  EXPECT_TRUE(std::isnan(var(tensor({7}, {1})).item()));  // n - correction == 0
  // Large offset: a one-pass E[x^2] - E[x]^2 would lose every digit in f32.
  const Tensor shifted = tensor({1e4 + 1, 1e4 + 2, 1e4 + 3, 1e4 + 4}, {4});
  EXPECT_NEAR(var(shifted).item(), 5.0 / 3.0, 1e-3);
}

TEST(Reduce, SumTo) {
  const std::vector<double> v = uniform_values(2 * 3 * 4, -1, 1, 6);
  const Tensor x = tensor(v, {2, 3, 4}, DType::f64);
  struct Case {
    Shape target;
    std::vector<int64_t> dims;  // what sum_to must fold, keepdim, then reshape
  };
  for (const Case& c : std::vector<Case>{{{3, 1}, {0, 2}}, {{4}, {0, 1}}, {{1, 1, 4}, {0, 1}},
                                         {{2, 1, 4}, {1}}, {{}, {0, 1, 2}}, {{1, 3, 4}, {0}}}) {
    const Tensor got = sum_to(x, c.target);
    EXPECT_EQ(got.shape(), c.target);
    const Groups g = group_by_output(v, {2, 3, 4}, c.dims, true);
    const std::vector<double> gv = got.to_vector<double>();
    ASSERT_EQ(gv.size(), g.values.size());
    for (size_t i = 0; i < gv.size(); ++i) EXPECT_NEAR(gv[i], ref_sum(g.values[i]), 1e-12);
  }
  EXPECT_EQ(sum_to(x, {2, 3, 4}).impl(), x.impl());  // nothing to do: the same tensor
  EXPECT_THROW(sum_to(x, {3, 3}), Error);
  EXPECT_THROW(sum_to(x, {5, 2, 3, 4}), Error);
}

TEST(Reduce, Errors) {
  const Tensor x = zeros({2, 0, 3});
  EXPECT_THROW(max(x, {1}), Error);
  EXPECT_THROW(argmin(x, 1), Error);
  EXPECT_NO_THROW(max(x, {0}));  // the zero-size dim is kept: an empty result
  EXPECT_THROW(mean(from_vector(std::vector<int64_t>{1, 2}, {2})), Error);
  EXPECT_THROW(var(from_vector(std::vector<int64_t>{1, 2}, {2})), Error);
  EXPECT_THROW(sum(zeros({2, 3}), {2}), Error);
  EXPECT_THROW(sum(zeros({2, 3}), {-3}), Error);
}

// ---- gradients
TEST(ReduceGrad, Gradcheck) {
  const Tensor x = rand_input({2, 3, 4}, -1, 1, 11);
  EXPECT_GRADCHECK([](auto& in) { return sum(in[0]); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return sum(in[0], {0, 2}); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return sum(in[0], {-1}, true); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return mean(in[0], {1}); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return mean(in[0], {0, 2}, true); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return max(in[0], {1}); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return max(in[0]); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return min(in[0], {0, 2}, true); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return var(in[0], {1}); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return var(in[0], {0, 2}, 0); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return var(in[0], {}, 1, true); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return sum_to(in[0], {3, 1}); }, {x});
  EXPECT_GRADCHECK([](auto& in) { return sum_to(in[0], {4}); }, {x});
}

TEST(ReduceGrad, GradcheckNonContiguousAndBroadcast) {
  const Tensor a = rand_input({3, 4}, -1, 1, 12);
  const Tensor b = rand_input({4}, -1, 1, 13);
  EXPECT_GRADCHECK([](auto& in) { return sum(in[0].t(), {1}); }, {a});
  EXPECT_GRADCHECK([](auto& in) { return max(in[0].t(), {0}); }, {a});
  EXPECT_GRADCHECK([](auto& in) { return var(in[0].slice(1, 0, 4, 2), {0}); }, {a});
  EXPECT_GRADCHECK([](auto& in) { return mean(in[0].t(), {0, 1}); }, {a});
  // Broadcasting backward goes through sum_to: b's gradient is summed over a's rows.
  EXPECT_GRADCHECK([](auto& in) { return sum(in[0] * in[1], {1}); }, {a, b});
  EXPECT_GRADCHECK([](auto& in) { return mean(in[0].t() + in[1].unsqueeze(1), {0}); }, {a, b});
}

TEST(ReduceGrad, MaxAndMinShareGradientAmongTies) {
  Tensor x = tensor({1, 3, 3, 2, 2, 0}, {2, 3}, DType::f64).requires_grad_(true);
  max(x, {1}).backward(tensor({1, 10}, {2}, DType::f64));
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>({0, 0.5, 0.5, 5, 5, 0}));
  x.set_grad(Tensor());
  min(x).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>({0, 0, 0, 0, 0, 1}));
  x.set_grad(Tensor());
  max(x).backward();
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>({0, 0.5, 0.5, 0, 0, 0}));
}

TEST(ReduceGrad, SumAndMeanGradientValues) {
  Tensor x = zeros({2, 3}, {.dtype = DType::f64}).requires_grad_(true);
  sum(x, {0}).backward(tensor({1, 2, 3}, {3}, DType::f64));
  EXPECT_EQ(x.grad().to_vector<double>(), std::vector<double>({1, 2, 3, 1, 2, 3}));
  x.set_grad(Tensor());
  mean(x).backward();
  for (double g : x.grad().to_vector<double>()) EXPECT_DOUBLE_EQ(g, 1.0 / 6.0);
  // No gradient for argmax or integer sums.
  EXPECT_FALSE(argmax(x, 1).requires_grad());
}

}  // namespace
}  // namespace kiln
