// matmul and bmm on the CPU: values against a naive triple loop for every shape case of
// torch.matmul, layouts BLAS reads in place (transposed views) or needs copied, 16-bit
// dtypes, empty sizes, errors that name both shapes, and f64 gradchecks.
#include <gtest/gtest.h>

#include <string>

#include "core/dispatch/matmul.h"
#include "core/generator.h"
#include "core/ops.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::gradcheck;
using testing::rand_input;

Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  Generator gen(seed);
  return randn(shape, {.dtype = dtype}, &gen);
}

// torch.matmul by brute force from the values alone, in f64: promote 1-D operands, broadcast
// batch dims, triple loop, drop the promoted dims.
Tensor naive_matmul(const Tensor& a, const Tensor& b) {
  Shape sa = a.shape(), sb = b.shape();
  const bool a_vec = sa.size() == 1, b_vec = sb.size() == 1;
  if (a_vec) sa.insert(sa.begin(), 1);
  if (b_vec) sb.push_back(1);
  const int64_t M = sa[sa.size() - 2], K = sa.back(), N = sb.back();
  EXPECT_EQ(sb[sb.size() - 2], K);
  const Shape ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  const size_t nb = std::max(ba.size(), bb.size());
  Shape batch(nb);
  for (size_t i = 0; i < nb; ++i) {  // right-aligned
    const int64_t x = i < ba.size() ? ba[ba.size() - 1 - i] : 1;
    const int64_t y = i < bb.size() ? bb[bb.size() - 1 - i] : 1;
    batch[nb - 1 - i] = std::max(x, y);
  }
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  const int64_t B = shape_numel(batch);
  std::vector<double> out(B * M * N, 0.0);
  for (int64_t bi = 0; bi < B; ++bi) {
    // Linear batch offsets of a and b for batch element bi (size-1 dims broadcast).
    int64_t rest = bi, oa = 0, ob = 0, sa_mul = 1, sb_mul = 1;
    for (size_t i = 0; i < nb; ++i) {
      const int64_t c = rest % batch[nb - 1 - i];
      rest /= batch[nb - 1 - i];
      if (i < ba.size()) {
        const int64_t s = ba[ba.size() - 1 - i];
        oa += (s == 1 ? 0 : c) * sa_mul;
        sa_mul *= s;
      }
      if (i < bb.size()) {
        const int64_t s = bb[bb.size() - 1 - i];
        ob += (s == 1 ? 0 : c) * sb_mul;
        sb_mul *= s;
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += va[(oa * M + m) * K + k] * vb[(ob * K + k) * N + n];
        out[(bi * M + m) * N + n] = acc;
      }
  }
  Shape shape = batch;
  if (!a_vec) shape.push_back(M);
  if (!b_vec) shape.push_back(N);
  return from_vector(out, shape, {.dtype = DType::f64});
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

void expect_matches_naive(const Tensor& a, const Tensor& b, double rtol, const std::string& what) {
  const Tensor got = matmul(a, b);
  const Tensor want = naive_matmul(a, b);
  ASSERT_EQ(got.shape(), want.shape()) << what;
  EXPECT_LE(max_abs_diff(got, want), rtol * std::max(1.0, max_abs(want)))
      << what << ": " << a.meta_str() << " @ " << b.meta_str();
}

// ---------------------------------------------------------------- values

TEST(Matmul, HandComputed) {
  const Tensor u = from_vector(std::vector<double>{1, 2, 3}, {3}, {.dtype = DType::f64});
  const Tensor v = from_vector(std::vector<double>{4, 5, 6}, {3}, {.dtype = DType::f64});
  const Tensor dot = matmul(u, v);
  EXPECT_EQ(dot.dim(), 0);
  EXPECT_DOUBLE_EQ(dot.item(), 32.0);

  const Tensor a = from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
  const Tensor b = from_vector(std::vector<float>{5, 6, 7, 8}, {2, 2});
  EXPECT_EQ(matmul(a, b).to_vector<float>(), (std::vector<float>{19, 22, 43, 50}));
  // [1, 2] @ [[5, 6], [7, 8]] and [[1, 2], [3, 4]] @ [5, 6]
  const Tensor r = from_vector(std::vector<float>{1, 2}, {2});
  const Tensor c = from_vector(std::vector<float>{5, 6}, {2});
  EXPECT_EQ(matmul(r, b).to_vector<float>(), (std::vector<float>{19, 22}));
  EXPECT_EQ(matmul(a, c).to_vector<float>(), (std::vector<float>{17, 39}));
}

struct ShapeCase {
  Shape a, b;
  const char* what;
};

const std::vector<ShapeCase> kShapeCases = {
    {{7}, {7}, "1-D . 1-D (dot)"},
    {{3, 5}, {5, 4}, "2-D @ 2-D"},
    {{5}, {5, 4}, "1-D @ 2-D"},
    {{3, 5}, {5}, "2-D @ 1-D"},
    {{2, 3, 5}, {5, 4}, "3-D @ 2-D (folded)"},
    {{2, 2, 3, 5}, {5, 4}, "4-D @ 2-D (folded)"},
    {{2, 3, 5}, {5}, "3-D @ 1-D"},
    {{5}, {2, 5, 4}, "1-D @ 3-D"},
    {{3, 5}, {2, 5, 4}, "2-D @ 3-D (a broadcast)"},
    {{2, 3, 5}, {2, 5, 4}, "3-D @ 3-D"},
    {{2, 1, 3, 5}, {4, 5, 6}, "broadcast batch [2,1] x [4]"},
    {{1, 3, 5}, {3, 1, 5, 2}, "broadcast batch [1] x [3,1]"},
    {{1, 1}, {1, 1}, "1x1"},
    {{1, 9}, {9, 1}, "row @ column"},
};

TEST(Matmul, EveryShapeCaseMatchesNaiveLoops) {
  uint64_t seed = 1;
  for (const ShapeCase& c : kShapeCases) {
    expect_matches_naive(random(c.a, seed), random(c.b, seed + 100), 1e-12, c.what);
    expect_matches_naive(random(c.a, seed, DType::f32), random(c.b, seed + 100, DType::f32), 1e-5,
                         c.what);
    ++seed;
  }
}

TEST(Matmul, TransposedViewsAreReadInPlace) {
  const Tensor x = random({5, 3}, 1), y = random({4, 5}, 2);
  expect_matches_naive(x.t(), y.t(), 1e-12, "a^T @ b^T");
  expect_matches_naive(x.t(), random({5, 4}, 3), 1e-12, "a^T @ b");
  const Tensor bx = random({2, 5, 3}, 4), by = random({2, 4, 5}, 5);
  expect_matches_naive(bx.transpose(1, 2), by.transpose(1, 2), 1e-12, "batched a^T @ b^T");
  expect_matches_naive(bx.transpose(1, 2), random({5, 4}, 6), 1e-12, "batched a^T @ 2-D");

  // The kernel itself takes the transposed views: no copy is needed to get there.
  Tensor out = empty({2, 3, 4}, {.dtype = DType::f64});
  bmm_stub(kCPU, out, bx.transpose(1, 2), by.transpose(1, 2));
  EXPECT_LE(max_abs_diff(out, naive_matmul(bx.transpose(1, 2), by.transpose(1, 2))), 1e-12);
  // ... and refuses layouts BLAS cannot read, rather than misreading them.
  const Tensor strided = random({2, 6, 10}, 7).slice(1, 0, 6, 2).slice(2, 0, 10, 2);  // [2,3,5]
  Tensor out2 = empty({2, 3, 4}, {.dtype = DType::f64});
  EXPECT_THROW(bmm_stub(kCPU, out2, strided, random({2, 5, 4}, 8)), Error);
}

TEST(Matmul, NonContiguousAndBroadcastInputs) {
  // Every-other-element slices: neither row- nor column-major, so the op copies them.
  const Tensor a = random({6, 10}, 1).slice(0, 0, 6, 2).slice(1, 0, 10, 2);  // [3, 5]
  const Tensor b = random({5, 8}, 2).slice(1, 0, 8, 2);                      // [5, 4]
  expect_matches_naive(a, b, 1e-12, "strided slices");
  // Stride-0 batch dims from expand, and a strided 1-D vector.
  expect_matches_naive(random({3, 5}, 3).expand({4, 3, 5}), random({4, 5, 2}, 4), 1e-12,
                       "expanded batch");
  expect_matches_naive(random({10}, 5).slice(0, 0, 10, 2), random({5, 3}, 6), 1e-12,
                       "strided vector");
  // A view with an offset (rows start mid-buffer).
  expect_matches_naive(random({4, 7}, 7).narrow(1, 2, 5), random({5, 3}, 8), 1e-12, "offset view");
}

TEST(Matmul, HalfPrecisionAccumulatesInFloat) {
  for (DType t : {DType::f16, DType::bf16}) {
    const Tensor a = random({3, 64}, 1).to(t), b = random({64, 5}, 2).to(t);
    const Tensor got = matmul(a, b);
    EXPECT_EQ(got.dtype(), t);
    // Reference on the same rounded inputs; the only error left is the output rounding.
    const Tensor want = naive_matmul(a.to(DType::f64), b.to(DType::f64));
    const double ulp = t == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
    EXPECT_LE(max_abs_diff(got, want), ulp * max_abs(want)) << t;
    // Batched and transposed 16-bit operands take the same path.
    expect_matches_naive(random({2, 64, 3}, 3).to(t).transpose(1, 2), random({2, 64, 4}, 4).to(t),
                         ulp, "16-bit transposed batch");
  }
}

TEST(Matmul, EmptySizes) {
  const Tensor z = matmul(random({3, 0}, 1), random({0, 4}, 2));  // K = 0: an empty sum
  EXPECT_EQ(z.shape(), (Shape{3, 4}));
  EXPECT_EQ(max_abs(z), 0.0);
  EXPECT_EQ(matmul(random({0, 5}, 1), random({5, 4}, 2)).shape(), (Shape{0, 4}));
  EXPECT_EQ(matmul(random({2, 0, 5}, 1), random({5, 4}, 2)).shape(), (Shape{2, 0, 4}));
  EXPECT_EQ(matmul(random({0, 3, 5}, 1), random({5, 4}, 2)).shape(), (Shape{0, 3, 4}));
  EXPECT_EQ(matmul(random({0}, 1), random({0}, 2)).item(), 0.0);
  EXPECT_EQ(bmm(random({2, 3, 0}, 1), random({2, 0, 4}, 2)).shape(), (Shape{2, 3, 4}));
}

TEST(Matmul, BadShapesNameBothShapes) {
  const std::string inner = error_of([] { matmul(random({2, 3}, 1), random({4, 5}, 2)); });
  EXPECT_NE(inner.find("[2, 3]"), std::string::npos) << inner;
  EXPECT_NE(inner.find("[4, 5]"), std::string::npos) << inner;

  const std::string batch = error_of([] { matmul(random({2, 3, 4}, 1), random({3, 4, 5}, 2)); });
  EXPECT_NE(batch.find("[2, 3, 4]"), std::string::npos) << batch;
  EXPECT_NE(batch.find("[3, 4, 5]"), std::string::npos) << batch;

  const std::string bmm_err = error_of([] { bmm(random({2, 3, 4}, 1), random({3, 4, 5}, 2)); });
  EXPECT_NE(bmm_err.find("[2, 3, 4]"), std::string::npos) << bmm_err;
  EXPECT_NE(bmm_err.find("[3, 4, 5]"), std::string::npos) << bmm_err;

  const std::string bmm_dims = error_of([] { bmm(random({3, 4}, 1), random({4, 5}, 2)); });
  EXPECT_NE(bmm_dims.find("[3, 4]"), std::string::npos) << bmm_dims;

  const std::string scalar =
      error_of([] { matmul(scalar_tensor(2.0, {.dtype = DType::f64}), random({3}, 1)); });
  EXPECT_NE(scalar.find("at least 1 dim"), std::string::npos) << scalar;

  const std::string dtypes = error_of([] {
    matmul(random({2, 3}, 1), random({3, 2}, 2, DType::f32));
  });
  EXPECT_NE(dtypes.find("f64"), std::string::npos) << dtypes;
  EXPECT_NE(dtypes.find("f32"), std::string::npos) << dtypes;

  EXPECT_THROW(matmul(arange(4).view({2, 2}), arange(4).view({2, 2})), Error);  // integers
}

// ---------------------------------------------------------------- gradients

TEST(MatmulGrad, OneAndTwoDims) {
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({5}, -1, 1, 1), rand_input({5}, -1, 1, 2)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({3, 4}, -1, 1, 3), rand_input({4, 2}, -1, 1, 4)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({4}, -1, 1, 5), rand_input({4, 3}, -1, 1, 6)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({3, 4}, -1, 1, 7), rand_input({4}, -1, 1, 8)});
}

TEST(MatmulGrad, BatchedAndBroadcast) {
  // Folded [..., M, K] @ [K, N] (b's gradient sums over the batch inside one GEMM).
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({2, 3, 4}, -1, 1, 1), rand_input({4, 2}, -1, 1, 2)});
  // 2-D @ batched: a's gradient is summed over the batch.
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({3, 4}, -1, 1, 3), rand_input({2, 4, 2}, -1, 1, 4)});
  // Batch dims broadcast on both sides.
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({2, 1, 3, 4}, -1, 1, 5), rand_input({3, 4, 2}, -1, 1, 6)});
  // 1-D against batched, both ways.
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({4}, -1, 1, 7), rand_input({2, 4, 3}, -1, 1, 8)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0], in[1]); },
                   {rand_input({2, 3, 4}, -1, 1, 9), rand_input({4}, -1, 1, 10)});
}

TEST(MatmulGrad, NonContiguousInputs) {
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0].t(), in[1].t()); },
                   {rand_input({4, 3}, -1, 1, 1), rand_input({2, 4}, -1, 1, 2)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0].transpose(1, 2), in[1]); },
                   {rand_input({2, 4, 3}, -1, 1, 3), rand_input({4, 2}, -1, 1, 4)});
  EXPECT_GRADCHECK([](auto& in) { return matmul(in[0].slice(1, 0, 8, 2), in[1]); },
                   {rand_input({3, 8}, -1, 1, 5), rand_input({4, 2}, -1, 1, 6)});
}

TEST(MatmulGrad, Bmm) {
  EXPECT_GRADCHECK([](auto& in) { return bmm(in[0], in[1]); },
                   {rand_input({2, 3, 4}, -1, 1, 1), rand_input({2, 4, 5}, -1, 1, 2)});
  EXPECT_GRADCHECK([](auto& in) { return bmm(in[0].transpose(1, 2), in[1].transpose(1, 2)); },
                   {rand_input({2, 4, 3}, -1, 1, 3), rand_input({2, 5, 4}, -1, 1, 4)});
}

TEST(MatmulGrad, OnlyTheOperandsThatNeedIt) {
  Tensor a = rand_input({3, 4}, -1, 1, 1);
  Tensor b = random({4, 2}, 2);  // no grad
  sum(matmul(a, b)).backward();
  ASSERT_TRUE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  // d/da sum(a @ b) = ones @ b^T: every row of the gradient is b's row sums.
  const std::vector<double> g = a.grad().to_vector<double>(), vb = b.to_vector<double>();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t k = 0; k < 4; ++k) EXPECT_NEAR(g[i * 4 + k], vb[k * 2] + vb[k * 2 + 1], 1e-12);
}

}  // namespace
}  // namespace kiln
