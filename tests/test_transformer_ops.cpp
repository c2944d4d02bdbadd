// embedding, layer_norm, add_layer_norm and fused_cross_entropy on the CPU: values against
// formulas written out here in double (or against the ops they fuse: index_select,
// x + residual then layer_norm, cross_entropy on the unpadded columns), gradients by finite
// differences in f64 (non-contiguous inputs, repeated indices, ignore_index, padded classes),
// bit-identical embedding gradients from run to run, argument errors, and parity with
// PyTorch 1.13 (layer_norm, embedding, forward and backward) through /usr/bin/python3.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"
#include "tests/npy.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::gradcheck;
using testing::rand_input;
using testing::uniform_values;

Tensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  return from_vector(v, shape, {.dtype = dtype});
}

Tensor indices_of(const std::vector<int64_t>& v, const Shape& shape, DType dtype = DType::i64) {
  return from_vector(v, shape).to(dtype);
}

void expect_values(const Tensor& got, const std::vector<double>& want, double tol, const std::string& what) {
  const std::vector<double> g = got.to_vector<double>();
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i)
    EXPECT_NEAR(g[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << what << " element " << i;
}

// Layer norm of each row of `x` ([rows, c], row-major) in double, from the definition.
std::vector<double> ref_layer_norm(const std::vector<double>& x, int64_t c, const std::vector<double>& w,
                                   const std::vector<double>& b, double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / c; ++r) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < c; ++k) mean += x[r * c + k] / c;
    for (int64_t k = 0; k < c; ++k) var += (x[r * c + k] - mean) * (x[r * c + k] - mean) / c;
    for (int64_t k = 0; k < c; ++k)
      y[r * c + k] = (x[r * c + k] - mean) / std::sqrt(var + eps) * (w.empty() ? 1.0 : w[k]) +
                     (b.empty() ? 0.0 : b[k]);
  }
  return y;
}

// ================================================================ embedding
TEST(Embedding, PicksRowsForAnyIndexShapeAndType) {
  const Tensor w = tensor(uniform_values(5 * 3, -1, 1, 1), {5, 3}, DType::f32);
  const std::vector<double> wv = w.to_vector<double>();
  const std::vector<int64_t> idx = {4, 0, 2, 2, 1, 4};
  for (DType it : {DType::i64, DType::i32}) {
    const Tensor y = embedding(w, indices_of(idx, {2, 3}, it));
    EXPECT_EQ(y.shape(), Shape({2, 3, 3}));
    EXPECT_EQ(y.dtype(), DType::f32);
    std::vector<double> want;
    for (int64_t i : idx)
      for (int64_t c = 0; c < 3; ++c) want.push_back(wv[i * 3 + c]);
    EXPECT_EQ(y.to_vector<double>(), want) << dtype_name(it);
  }
  // A 0-d index gives one row; a non-contiguous weight is read through its strides.
  EXPECT_EQ(embedding(w, indices_of({3}, {})).shape(), Shape({3}));
  const Tensor wt = tensor(uniform_values(12, -1, 1, 2), {3, 4}).t();  // [4, 3]
  EXPECT_EQ(embedding(wt, indices_of({1, 3}, {2})).to_vector<double>(),
            index_select(wt, 0, indices_of({1, 3}, {2})).to_vector<double>());
}

TEST(Embedding, GradientSumsRepeatedRows) {
  const Tensor w = rand_input({6, 4}, -1, 1, 3);
  const Tensor idx = indices_of({1, 5, 1, 1, 0, 5}, {3, 2});
  const Tensor g = tensor(uniform_values(24, -1, 1, 4), {3, 2, 4});
  embedding(w, idx).backward(g);
  const std::vector<double> gv = g.to_vector<double>();
  std::vector<double> want(24, 0.0);  // unused rows (2, 3, 4) stay zero
  const std::vector<int64_t> iv = {1, 5, 1, 1, 0, 5};
  for (size_t n = 0; n < iv.size(); ++n)
    for (int64_t c = 0; c < 4; ++c) want[iv[n] * 4 + c] += gv[n * 4 + c];
  expect_values(w.grad(), want, 1e-15, "embedding grad");
}

TEST(Embedding, Gradcheck) {
  const Tensor w = rand_input({7, 3}, -1, 1, 5);
  const Tensor idx = indices_of({6, 0, 6, 3, 6, 0, 1, 1}, {2, 4}, DType::i32);
  EXPECT_GRADCHECK([&](auto& in) { return embedding(in[0], idx); }, {w});
  // Through a transposed weight view.
  const Tensor wt = rand_input({3, 7}, -1, 1, 6);
  EXPECT_GRADCHECK([&](auto& in) { return embedding(in[0].t(), idx); }, {wt});
}

TEST(Embedding, BackwardIsBitIdenticalAcrossRuns) {
  // Many repeats of few tokens, in f32 and bf16: any change of summation order changes bits.
  const int64_t n = 4096, vocab = 16, c = 96;
  std::vector<int64_t> iv(n);
  for (int64_t i = 0; i < n; ++i) iv[i] = (i * 7 + i / 13) % vocab;
  const Tensor idx = indices_of(iv, {n});
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor w0 = tensor(uniform_values(vocab * c, -1, 1, 7), {vocab, c}, dtype);
    const Tensor g = tensor(uniform_values(n * c, -1, 1, 8), {n, c}, dtype);
    std::vector<double> first;
    for (int run = 0; run < 3; ++run) {
      Tensor w = w0.detach().requires_grad_(true);
      embedding(w, idx).backward(g);
      const std::vector<double> got = w.grad().to_vector<double>();
      if (run == 0) first = got;
      else EXPECT_EQ(got, first) << dtype_name(dtype) << " run " << run;
    }
    // And the sums are right: within the accumulation's rounding of a double reference.
    const std::vector<double> gv = g.to_vector<double>();
    std::vector<double> want(vocab * c, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < c; ++k) want[iv[i] * c + k] += gv[i * c + k];
    const double tol = dtype == DType::f32 ? 1e-5 : 1e-2;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(first[i], want[i], tol * std::max(1.0, std::abs(want[i]))) << dtype_name(dtype) << " " << i;
  }
}

TEST(Embedding, Errors) {
  const Tensor w = zeros({50, 4});
  expect_error([&] { embedding(w, indices_of({3, 50}, {2})); }, {"index 50", "position 1", "50 rows"});
  expect_error([&] { embedding(w, indices_of({-1}, {1})); }, {"index -1"});
  expect_error([&] { embedding(w, zeros({2})); }, {"indices", "f32[2]"});
  expect_error([&] { embedding(zeros({5}), indices_of({0}, {1})); }, {"weight", "f32[5]"});
}

// ================================================================ layer norm
TEST(LayerNorm, MatchesFormula) {
  const int64_t rows = 5, c = 37;
  const std::vector<double> xv = uniform_values(rows * c, -3, 5, 9);
  const std::vector<double> wv = uniform_values(c, 0.5, 1.5, 10), bv = uniform_values(c, -1, 1, 11);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    const Tensor x = tensor(xv, {rows, c}, dtype);
    const std::vector<double> xr = x.to_vector<double>();  // the rounded values the op sees
    const Tensor w = tensor(wv, {c}, dtype), b = tensor(bv, {c}, dtype);
    const std::vector<double> wr = w.to_vector<double>(), br = b.to_vector<double>();
    // One rounding of the output for 16-bit floats (bf16: 2^-8 relative), f32 arithmetic otherwise.
    const double tol = dtype == DType::f64 ? 1e-13 : dtype == DType::f32 ? 1e-5 : dtype == DType::f16 ? 2e-3 : 1e-2;
    const Tensor y = layer_norm(x, w, b, 1e-5);
    EXPECT_EQ(y.dtype(), dtype);
    expect_values(y, ref_layer_norm(xr, c, wr, br, 1e-5), tol, std::string("affine ") + std::string(dtype_name(dtype)));
    expect_values(layer_norm(x, Tensor(), Tensor(), 1e-3), ref_layer_norm(xr, c, {}, {}, 1e-3), tol,
                  std::string("plain ") + std::string(dtype_name(dtype)));
  }
  // Mixed precision: bf16 activations with f32 parameters keep bf16 out, f32 parameter grads.
  const Tensor xb = tensor(xv, {rows, c}, DType::bf16);
  Tensor w32 = tensor(wv, {c}, DType::f32).requires_grad_(true);
  const Tensor y = layer_norm(xb, w32, Tensor());
  EXPECT_EQ(y.dtype(), DType::bf16);
  sum(y.to(DType::f32)).backward();
  EXPECT_EQ(w32.grad().dtype(), DType::f32);
}

TEST(LayerNorm, LargeMeanDoesNotCancel) {
  // Two-pass statistics: values 1e4 +- 1 in f32 still normalise to unit variance (one pass,
  // E[x^2] - E[x]^2 in f32, would lose the variance of ~0.33 against the ulp of 1e8, which is 8).
  // The f32 mean is good to half an ulp of 1e4 (5e-4), which bounds the error of xhat.
  std::vector<double> v = uniform_values(64, -1, 1, 12);
  for (double& e : v) e += 1e4;
  const Tensor x = tensor(v, {1, 64}, DType::f32);
  expect_values(layer_norm(x, Tensor(), Tensor(), 0.0), ref_layer_norm(x.to_vector<double>(), 64, {}, {}, 0.0),
                2e-3, "mean 1e4");
}

TEST(LayerNorm, Gradcheck) {
  const Tensor x = rand_input({3, 4, 6}, -2, 2, 13);
  const Tensor w = rand_input({6}, 0.5, 1.5, 14), b = rand_input({6}, -1, 1, 15);
  EXPECT_GRADCHECK([](auto& in) { return layer_norm(in[0], in[1], in[2]); }, {x, w, b});
  EXPECT_GRADCHECK([](auto& in) { return layer_norm(in[0], Tensor(), Tensor(), 1e-3); }, {x});
  EXPECT_GRADCHECK([&](auto& in) { return layer_norm(in[0], in[1], Tensor()); }, {x, w});
  // Non-contiguous input: normalise over what was dim 1.
  const Tensor xt = rand_input({6, 5}, -2, 2, 16);
  EXPECT_GRADCHECK([](auto& in) { return layer_norm(in[0].t(), in[1], in[2]); }, {xt, w, b});
}

TEST(LayerNorm, Errors) {
  expect_error([] { layer_norm(zeros({2, 3}), zeros({4}), Tensor()); }, {"weight", "f32[4]", "[3]"});
  expect_error([] { layer_norm(zeros({2, 3}), Tensor(), zeros({3, 1})); }, {"bias"});
  expect_error([] { layer_norm(from_vector(std::vector<int64_t>{1, 2}, {2}), Tensor(), Tensor()); },
               {"floating"});
  expect_error([] { add_layer_norm(zeros({2, 3}), zeros({1, 3}), Tensor(), Tensor()); },
               {"residual", "f32[1, 3]", "f32[2, 3]"});
}

TEST(AddLayerNorm, EqualsAddThenLayerNorm) {
  const Shape shape = {4, 3, 20};
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    const Tensor x = tensor(uniform_values(240, -2, 2, 17), shape, dtype);
    const Tensor r = tensor(uniform_values(240, -2, 2, 18), shape, dtype);
    const Tensor w = tensor(uniform_values(20, 0.5, 1.5, 19), {20}, dtype);
    const Tensor b = tensor(uniform_values(20, -1, 1, 20), {20}, dtype);
    const auto [s, n] = add_layer_norm(x, r, w, b);
    const Tensor s_ref = add(x, r);
    // The sum is rounded to the dtype like add's, and the normalisation reads that sum.
    EXPECT_EQ(s.to_vector<double>(), s_ref.to_vector<double>()) << dtype_name(dtype);
    EXPECT_EQ(n.to_vector<double>(), layer_norm(s_ref, w, b).to_vector<double>()) << dtype_name(dtype);
  }
}

TEST(AddLayerNorm, MixedDtypesPromoteLikeAdd) {
  // Under autocast an f32 residual stream meets a bf16 branch: the sum is f32, and each input
  // gets its gradient in its own dtype.
  Tensor x = tensor(uniform_values(24, -2, 2, 36), {2, 12}, DType::bf16).requires_grad_(true);
  Tensor r = tensor(uniform_values(24, -2, 2, 37), {2, 12}, DType::f32).requires_grad_(true);
  const auto [s, n] = add_layer_norm(x, r, Tensor(), Tensor());
  EXPECT_EQ(s.dtype(), DType::f32);
  EXPECT_EQ(n.dtype(), DType::f32);
  EXPECT_EQ(s.to_vector<double>(), add(x, r).to_vector<double>());
  sum(add(s, n)).backward();
  EXPECT_EQ(x.grad().dtype(), DType::bf16);
  EXPECT_EQ(r.grad().dtype(), DType::f32);
}

TEST(AddLayerNorm, Gradcheck) {
  const Tensor x = rand_input({3, 5}, -2, 2, 21), r = rand_input({3, 5}, -2, 2, 22);
  const Tensor w = rand_input({5}, 0.5, 1.5, 23), b = rand_input({5}, -1, 1, 24);
  // Both outputs used (the residual stream continues from the sum), as in a pre-LN block.
  EXPECT_GRADCHECK(
      [](auto& in) {
        auto [s, n] = add_layer_norm(in[0], in[1], in[2], in[3]);
        return add(mul(s, s), n);
      },
      {x, r, w, b});
  // Only the normed output used.
  EXPECT_GRADCHECK([](auto& in) { return add_layer_norm(in[0], in[1], in[2], in[3]).second; }, {x, r, w, b});
  // Non-contiguous inputs.
  const Tensor xt = rand_input({5, 3}, -2, 2, 25);
  EXPECT_GRADCHECK([](auto& in) { return add_layer_norm(in[0].t(), in[1], Tensor(), Tensor()).second; },
                   {xt, r});
}

// ================================================================ fused cross-entropy
struct ClassifierCase {
  Tensor logits;   // [n, v] f64 leaf
  Tensor targets;  // [n] with some ignore_index
};

ClassifierCase classifier_case(int64_t n, int64_t v, int64_t valid, int64_t ignore_index, uint64_t seed) {
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = i % 3 == 1 ? ignore_index : (i * 5 + 2) % valid;
  return {rand_input({n, v}, -4, 4, seed), from_vector(t, {n})};
}

TEST(FusedCrossEntropy, EqualsCrossEntropyOnValidColumns) {
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    const int64_t n = 7, v = 12, valid = 9;
    ClassifierCase c = classifier_case(n, v, valid, -100, 26);
    Tensor logits = c.logits.detach().to(dtype).requires_grad_(true);
    Tensor ref_logits = logits.detach().requires_grad_(true);
    const Tensor loss = fused_cross_entropy(logits, c.targets, valid);
    const Tensor ref = cross_entropy(ref_logits.slice(1, 0, valid), c.targets);
    EXPECT_EQ(loss.dtype(), dtype == DType::f64 ? DType::f64 : DType::f32);
    EXPECT_EQ(loss.dim(), 0);
    const double tol = dtype == DType::f64 ? 1e-13 : dtype == DType::f32 ? 1e-6 : 1e-2;
    EXPECT_NEAR(loss.item(), ref.item(), tol) << dtype_name(dtype);
    // A seed of 3 checks the gradient is scaled by the output gradient.
    loss.backward(full({}, 3.0, {.dtype = loss.dtype()}));
    ref.backward(full({}, 3.0, {.dtype = ref.dtype()}));
    const std::vector<double> g = logits.grad().to_vector<double>(), gr = ref_logits.grad().to_vector<double>();
    for (int64_t i = 0; i < n * v; ++i) {
      if (i % v >= valid) EXPECT_EQ(g[i], 0.0) << "padded column, element " << i;
      else EXPECT_NEAR(g[i], gr[i], tol) << dtype_name(dtype) << " element " << i;
    }
  }
}

TEST(FusedCrossEntropy, BatchedShapesIgnoreIndexAndAllIgnored) {
  // [B, T, V] logits with [B, T] targets; i32 targets; ignore_index inside the class range.
  const Tensor logits = rand_input({2, 3, 5}, -2, 2, 27);
  const Tensor t = indices_of({0, 4, 0, 2, 0, 1}, {2, 3}, DType::i32);
  const Tensor loss = fused_cross_entropy(logits, t, -1, /*ignore_index=*/0);
  const Tensor ref = cross_entropy(logits.reshape({6, 5}), t.reshape({6}), 0);
  EXPECT_NEAR(loss.item(), ref.item(), 1e-13);
  const Tensor all = fused_cross_entropy(logits, full({2, 3}, -100, {.dtype = DType::i64}));
  EXPECT_TRUE(std::isnan(all.item())) << "mean over no targets is NaN, like PyTorch";
}

TEST(FusedCrossEntropy, WithoutGradientSameLoss) {
  // Evaluation (no gradient wanted) skips the gradient pass; the loss is the same.
  ClassifierCase c = classifier_case(9, 11, 10, -100, 38);
  const double with_grad = fused_cross_entropy(c.logits, c.targets, 10).item();
  NoGradGuard no_grad;
  const Tensor loss = fused_cross_entropy(c.logits, c.targets, 10);
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_EQ(loss.item(), with_grad);
}

TEST(FusedCrossEntropy, Gradcheck) {
  ClassifierCase c = classifier_case(6, 8, 6, -100, 28);
  EXPECT_GRADCHECK([&](auto& in) { return fused_cross_entropy(in[0], c.targets, 6); }, {c.logits});
  EXPECT_GRADCHECK([&](auto& in) { return fused_cross_entropy(in[0], c.targets); }, {c.logits});
  // Non-contiguous logits: the transpose of an [8, 6] leaf.
  const Tensor lt = rand_input({8, 6}, -3, 3, 29);
  EXPECT_GRADCHECK([&](auto& in) { return fused_cross_entropy(in[0].t(), c.targets, 7); }, {lt});
}

TEST(FusedCrossEntropy, Errors) {
  const Tensor logits = zeros({2, 5});
  expect_error([&] { fused_cross_entropy(logits, indices_of({0, 4}, {2}), 4); }, {"target 4", "row 1", "4 valid"});
  expect_error([&] { fused_cross_entropy(logits, indices_of({0, 1, 2}, {3})); }, {"targets", "[2]"});
  expect_error([&] { fused_cross_entropy(logits, indices_of({0, 1}, {2}), 6); }, {"valid_classes 6"});
  expect_error([&] { fused_cross_entropy(logits, zeros({2})); }, {"targets", "f32[2]"});
}

// ================================================================ PyTorch parity
// layer_norm (affine, f64) and embedding (repeated indices) forward and backward, against
// torch.nn.functional on the same inputs; agreement to 1e-12 relative to each tensor's scale.
TEST(TransformerOpsParity, LayerNormAndEmbeddingMatchPyTorch) {
  const std::string why = testing::python_unavailable(testing::kSystemPython, "torch, numpy");
  if (!why.empty()) GTEST_SKIP() << why;
  namespace fs = std::filesystem;
  const fs::path dir = testing::make_temp_dir("kiln_transformer_parity_");
  ASSERT_FALSE(dir.empty());

  const Tensor x = rand_input({4, 3, 10}, -3, 3, 30), w = rand_input({10}, 0.5, 1.5, 31);
  const Tensor b = rand_input({10}, -1, 1, 32), gy = rand_input({4, 3, 10}, -1, 1, 33).detach();
  const Tensor table = rand_input({9, 5}, -1, 1, 34), ge = rand_input({2, 6, 5}, -1, 1, 35).detach();
  const Tensor idx = indices_of({8, 0, 3, 3, 8, 8, 1, 0, 2, 3, 8, 7}, {2, 6});
  for (auto [name, t] : std::vector<std::pair<std::string, Tensor>>{
           {"x", x}, {"w", w}, {"b", b}, {"gy", gy}, {"table", table}, {"ge", ge}, {"idx", idx}})
    testing::write_npy(dir / (name + ".npy"), t.detach());
  std::ofstream(dir / "ref.py") << R"(import sys, numpy as np, torch
import torch.nn.functional as F
d = sys.argv[1]
L = lambda n: torch.from_numpy(np.load(f"{d}/{n}.npy"))
x, w, b, table = (L(n).requires_grad_() for n in ("x", "w", "b", "table"))
y = F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
y.backward(L("gy"))
e = F.embedding(L("idx"), table)
e.backward(L("ge"))
for n, t in (("y", y), ("dx", x.grad), ("dw", w.grad), ("db", b.grad), ("e", e), ("dtable", table.grad)):
    np.save(f"{d}/out_{n}.npy", t.detach().numpy())
)";
  const testing::CommandResult run =
      testing::run_command(testing::kSystemPython + " " + (dir / "ref.py").string() + " " + dir.string() + " 2>&1");
  ASSERT_TRUE(run.ok) << run.failure;

  const Tensor y = layer_norm(x, w, b);
  y.backward(gy);
  const Tensor e = embedding(table, idx);
  e.backward(ge);
  for (auto [name, t] : std::vector<std::pair<std::string, Tensor>>{
           {"y", y}, {"dx", x.grad()}, {"dw", w.grad()}, {"db", b.grad()}, {"e", e}, {"dtable", table.grad()}}) {
    const testing::NpyArray want = testing::read_npy(dir / ("out_" + name + ".npy"));
    ASSERT_EQ(want.shape, t.shape()) << name;
    const std::vector<double> got = t.to_vector<double>();
    double scale = 0;
    for (double v : want.values) scale = std::max(scale, std::abs(v));
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], want.values[i], 1e-12 * std::max(scale, 1.0)) << name << " element " << i;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
