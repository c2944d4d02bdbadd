// index_select, gather, scatter_add, index_add and cat on the CPU: hand-computed examples,
// naive-loop references on random data, index and shape errors, and f64 gradchecks.
#include <gtest/gtest.h>

#include <string>

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

Tensor random_index(int64_t high, const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randint(0, high, shape, {.dtype = DType::i64}, &gen);
}

Tensor f64(const std::vector<double>& v, const Shape& shape) {
  return from_vector(v, shape, {.dtype = DType::f64});
}

Tensor i64(const std::vector<int64_t>& v, const Shape& shape) { return from_vector(v, shape); }

std::vector<int64_t> unravel(int64_t i, const Shape& shape) {
  std::vector<int64_t> c(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    c[d] = i % shape[d];
    i /= shape[d];
  }
  return c;
}

int64_t ravel(const std::vector<int64_t>& c, const Shape& shape) {
  int64_t i = 0;
  for (size_t d = 0; d < shape.size(); ++d) i = i * shape[d] + c[d];
  return i;
}

// ---- naive references, element by element from the definitions
Tensor naive_index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const std::vector<double> vx = x.to_vector<double>();
  const std::vector<int64_t> vi = index.to_vector<int64_t>();
  Shape shape = x.shape();
  shape[dim] = static_cast<int64_t>(vi.size());
  std::vector<double> out(shape_numel(shape));
  for (int64_t i = 0; i < shape_numel(shape); ++i) {
    std::vector<int64_t> c = unravel(i, shape);
    c[dim] = vi[c[dim]];
    out[i] = vx[ravel(c, x.shape())];
  }
  return f64(out, shape);
}

Tensor naive_gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const std::vector<double> vx = x.to_vector<double>();
  const std::vector<int64_t> vi = index.to_vector<int64_t>();
  std::vector<double> out(vi.size());
  for (int64_t i = 0; i < index.numel(); ++i) {
    std::vector<int64_t> c = unravel(i, index.shape());
    c[dim] = vi[i];
    out[i] = vx[ravel(c, x.shape())];
  }
  return f64(out, index.shape());
}

Tensor naive_scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  std::vector<double> out = self.to_vector<double>();
  const std::vector<double> vs = src.to_vector<double>();
  const std::vector<int64_t> vi = index.to_vector<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i) {
    std::vector<int64_t> c = unravel(i, index.shape());
    const double v = vs[ravel(c, src.shape())];
    c[dim] = vi[i];
    out[ravel(c, self.shape())] += v;
  }
  return f64(out, self.shape());
}

Tensor naive_index_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  std::vector<double> out = self.to_vector<double>();
  const std::vector<double> vs = src.to_vector<double>();
  const std::vector<int64_t> vi = index.to_vector<int64_t>();
  for (int64_t i = 0; i < src.numel(); ++i) {
    std::vector<int64_t> c = unravel(i, src.shape());
    c[dim] = vi[c[dim]];
    out[ravel(c, self.shape())] += vs[i];
  }
  return f64(out, self.shape());
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---------------------------------------------------------------- index_select

TEST(IndexSelect, HandComputed) {
  const Tensor x = arange(0.0, 12.0, 1.0).view({3, 4});
  EXPECT_EQ(index_select(x, 0, i64({2, 0, 2}, {3})).to_vector<float>(),
            (std::vector<float>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11}));
  EXPECT_EQ(index_select(x, -1, from_vector(std::vector<int64_t>{3, 1}, {2}, {.dtype = DType::i32}))
                .to_vector<float>(),
            (std::vector<float>{3, 1, 7, 5, 11, 9}));
  EXPECT_EQ(index_select(x, 1, i64({}, {0})).shape(), (Shape{3, 0}));
  // Any dtype, and a transposed (non-contiguous) input.
  EXPECT_EQ(index_select(arange(6).view({2, 3}).t(), 0, i64({2}, {1})).to_vector<int64_t>(),
            (std::vector<int64_t>{2, 5}));
}

TEST(IndexSelect, MatchesNaiveLoop) {
  const Tensor x = random({4, 5, 6}, 1);
  for (int64_t dim = 0; dim < 3; ++dim) {
    const Tensor index = random_index(x.size(dim), {7}, 10 + dim);
    const Tensor got = index_select(x, dim, index);
    EXPECT_EQ(max_abs_diff(got, naive_index_select(x, dim, index)), 0.0) << "dim " << dim;
  }
  for (DType t : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor xt = x.to(t), index = random_index(5, {9}, 3);
    EXPECT_EQ(max_abs_diff(index_select(xt, 1, index), naive_index_select(xt, 1, index)), 0.0) << t;
  }
}

TEST(IndexSelect, OutOfRangeIndexNamesIndexAndSize) {
  const std::string e = error_of([] { index_select(random({3, 4}, 1), 0, i64({0, 5, 1}, {3})); });
  EXPECT_TRUE(contains(e, "index 5")) << e;
  EXPECT_TRUE(contains(e, "size 3")) << e;
  const std::string neg = error_of([] { index_select(random({3, 4}, 1), 1, i64({-1}, {1})); });
  EXPECT_TRUE(contains(neg, "index -1")) << neg;
  EXPECT_TRUE(contains(neg, "size 4")) << neg;
  // Index dtype and rank.
  EXPECT_THROW(index_select(random({3, 4}, 1), 0, random({2}, 2)), Error);
  EXPECT_THROW(index_select(random({3, 4}, 1), 0, i64({0, 1, 2, 0}, {2, 2})), Error);
}

// ---------------------------------------------------------------- gather

TEST(Gather, HandComputed) {
  // torch.gather's documentation example.
  const Tensor t = f64({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(gather(t, 1, i64({0, 0, 1, 0}, {2, 2})).to_vector<double>(),
            (std::vector<double>{1, 1, 4, 3}));
  EXPECT_EQ(gather(t, 0, i64({1, 0}, {1, 2})).to_vector<double>(), (std::vector<double>{3, 2}));
}

TEST(Gather, MatchesNaiveLoop) {
  const Tensor x = random({4, 5, 6}, 1);
  for (int64_t dim = 0; dim < 3; ++dim) {
    // The index may be smaller than the input in every dim, and longer along dim.
    Shape shape = {3, 4, 5};
    shape[dim] = 8;
    const Tensor index = random_index(x.size(dim), shape, 20 + dim);
    EXPECT_EQ(max_abs_diff(gather(x, dim, index), naive_gather(x, dim, index)), 0.0) << dim;
  }
  const Tensor xt = x.transpose(0, 2);  // [6, 5, 4], non-contiguous
  const Tensor index = random_index(5, {6, 3, 4}, 30);
  EXPECT_EQ(max_abs_diff(gather(xt, 1, index), naive_gather(xt, 1, index)), 0.0);
}

TEST(Gather, Errors) {
  const std::string e = error_of([] { gather(random({2, 3}, 1), 1, i64({0, 3}, {2, 1})); });
  EXPECT_TRUE(contains(e, "index 3")) << e;
  EXPECT_TRUE(contains(e, "size 3")) << e;
  const std::string big = error_of([] { gather(random({2, 3}, 1), 1, i64({0, 0, 0}, {3, 1})); });
  EXPECT_TRUE(contains(big, "[3, 1]") && contains(big, "[2, 3]")) << big;
  EXPECT_THROW(gather(random({2, 3}, 1), 1, i64({0, 0}, {2})), Error);  // rank mismatch
}

// ---------------------------------------------------------------- scatter_add

TEST(ScatterAdd, HandComputed) {
  // Duplicates accumulate; self is not modified (out of place).
  const Tensor self = f64({1, 1, 1, 1, 1}, {5});
  const Tensor out = scatter_add(self, 0, i64({0, 2, 0, 4}, {4}), f64({1, 2, 3, 4}, {4}));
  EXPECT_EQ(out.to_vector<double>(), (std::vector<double>{5, 1, 3, 1, 5}));
  EXPECT_EQ(self.to_vector<double>(), (std::vector<double>{1, 1, 1, 1, 1}));
  // 2-D along dim 1, index smaller than src (src's extra column is ignored).
  const Tensor z = zeros({2, 3}, {.dtype = DType::f64});
  EXPECT_EQ(scatter_add(z, 1, i64({2, 2, 0, 1}, {2, 2}), f64({1, 2, 9, 3, 4, 9}, {2, 3}))
                .to_vector<double>(),
            (std::vector<double>{0, 0, 3, 3, 4, 0}));
}

TEST(ScatterAdd, MatchesNaiveLoop) {
  const Tensor self = random({4, 5, 6}, 1);
  for (int64_t dim = 0; dim < 3; ++dim) {
    Shape shape = {3, 4, 5};
    shape[dim] = 9;  // more entries than self's size along dim: guaranteed repeats
    const Tensor index = random_index(self.size(dim), shape, 40 + dim);
    const Tensor src = random({4, 5, 9}, 50 + dim).narrow(2, 0, shape[2]).contiguous();
    const Tensor src_big = random({9, 9, 9}, 60 + dim);
    EXPECT_LE(max_abs_diff(scatter_add(self, dim, index, src_big),
                           naive_scatter_add(self, dim, index, src_big)),
              1e-12)
        << dim;
    (void)src;
  }
  const Tensor index = random_index(4, {3, 4}, 70);
  const Tensor r =
      scatter_add(arange(16).view({4, 4}), 0, index, ones({3, 4}, {.dtype = DType::i64}));
  EXPECT_EQ(r.dtype(), DType::i64);
  EXPECT_EQ(max_abs_diff(r, naive_scatter_add(arange(16).view({4, 4}), 0, index,
                                              ones({3, 4}, {.dtype = DType::i64}))),
            0.0);
}

TEST(ScatterAdd, Errors) {
  const std::string e = error_of(
      [] { scatter_add(zeros({3}, {.dtype = DType::f64}), 0, i64({7}, {1}), f64({1}, {1})); });
  EXPECT_TRUE(contains(e, "index 7") && contains(e, "size 3")) << e;
  EXPECT_THROW(scatter_add(zeros({3}), 0, i64({0}, {1}), f64({1}, {1})), Error);  // dtypes
  EXPECT_THROW(scatter_add(zeros({3}, {.dtype = DType::b8}), 0, i64({0}, {1}),
                           zeros({1}, {.dtype = DType::b8})),
               Error);
}

// ---------------------------------------------------------------- index_add

TEST(IndexAdd, HandComputed) {
  // torch.index_add's documentation example.
  const Tensor x = ones({5, 3}, {.dtype = DType::f64});
  const Tensor t = f64({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3});
  EXPECT_EQ(index_add(x, 0, i64({0, 4, 2}, {3}), t).to_vector<double>(),
            (std::vector<double>{2, 3, 4, 1, 1, 1, 8, 9, 10, 1, 1, 1, 5, 6, 7}));
  EXPECT_EQ(x.to_vector<double>(), std::vector<double>(15, 1.0));  // out of place
  // Repeated index along dim 1.
  EXPECT_EQ(index_add(zeros({2, 2}, {.dtype = DType::f64}), 1, i64({1, 1, 0}, {3}),
                      f64({1, 2, 3, 4, 5, 6}, {2, 3}))
                .to_vector<double>(),
            (std::vector<double>{3, 3, 6, 9}));
}

TEST(IndexAdd, MatchesNaiveLoop) {
  const Tensor self = random({4, 5, 6}, 1);
  for (int64_t dim = 0; dim < 3; ++dim) {
    Shape shape = self.shape();
    shape[dim] = 11;
    const Tensor index = random_index(self.size(dim), {11}, 80 + dim);
    const Tensor src = random(shape, 90 + dim);
    EXPECT_LE(
        max_abs_diff(index_add(self, dim, index, src), naive_index_add(self, dim, index, src)),
        1e-12)
        << dim;
  }
  // A large inner size spans several column blocks.
  const Tensor big = random({3, 1000}, 2), src = random({7, 1000}, 3);
  const Tensor index = random_index(3, {7}, 4);
  EXPECT_LE(max_abs_diff(index_add(big, 0, index, src), naive_index_add(big, 0, index, src)),
            1e-12);
}

TEST(IndexAdd, Errors) {
  const std::string e = error_of([] {
    index_add(zeros({3, 2}, {.dtype = DType::f64}), 0, i64({0, 3}, {2}), random({2, 2}, 1));
  });
  EXPECT_TRUE(contains(e, "index 3") && contains(e, "size 3")) << e;
  const std::string s = error_of([] {
    index_add(zeros({3, 2}, {.dtype = DType::f64}), 0, i64({0, 1}, {2}), random({2, 5}, 1));
  });
  EXPECT_TRUE(contains(s, "[2, 5]") && contains(s, "[3, 2]")) << s;
}

// ---------------------------------------------------------------- cat

TEST(Cat, HandComputed) {
  const Tensor a = f64({1, 2, 3, 4}, {2, 2}), b = f64({5, 6}, {1, 2});
  EXPECT_EQ(cat({a, b}, 0).to_vector<double>(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(cat({a, b.t()}, -1).to_vector<double>(), (std::vector<double>{1, 2, 5, 3, 4, 6}));
  EXPECT_EQ(cat({a, zeros({0, 2}, {.dtype = DType::f64}), b}, 0).shape(), (Shape{3, 2}));
  EXPECT_EQ(cat({a}, 1).to_vector<double>(), a.to_vector<double>());
}

TEST(Cat, Errors) {
  const std::string e = error_of([] { cat({random({2, 3}, 1), random({2, 4}, 2)}, 0); });
  EXPECT_TRUE(contains(e, "[2, 4]") && contains(e, "[2, 3]")) << e;
  EXPECT_THROW(cat({random({2, 3}, 1), random({2, 3}, 2, DType::f32)}, 0), Error);
  EXPECT_THROW(cat({random({2, 3}, 1), random({2, 3, 1}, 2)}, 0), Error);
  EXPECT_THROW(cat({}, 0), Error);
  EXPECT_THROW(cat({random({2, 3}, 1)}, 2), Error);
}

// ---------------------------------------------------------------- gradients

TEST(IndexGrad, IndexSelect) {
  const Tensor index = i64({2, 0, 2, 1}, {4});  // a repeat: its gradient rows add up
  EXPECT_GRADCHECK([index](auto& in) { return index_select(in[0], 0, index); },
                   {rand_input({3, 4}, -1, 1, 1)});
  EXPECT_GRADCHECK([index](auto& in) { return index_select(in[0], 1, index); },
                   {rand_input({2, 3, 2}, -1, 1, 2)});
  EXPECT_GRADCHECK([index](auto& in) { return index_select(in[0].t(), 0, index); },
                   {rand_input({4, 3}, -1, 1, 3)});
}

TEST(IndexGrad, Gather) {
  const Tensor index = i64({0, 2, 2, 1, 0, 0}, {2, 3});
  EXPECT_GRADCHECK([index](auto& in) { return gather(in[0], 1, index); },
                   {rand_input({2, 4}, -1, 1, 1)});
  EXPECT_GRADCHECK([index](auto& in) { return gather(in[0].t(), 1, index); },
                   {rand_input({4, 3}, -1, 1, 2)});
}

TEST(IndexGrad, ScatterAdd) {
  const Tensor index = i64({0, 2, 2, 1, 0, 0}, {2, 3});
  EXPECT_GRADCHECK([index](auto& in) { return scatter_add(in[0], 1, index, in[1]); },
                   {rand_input({2, 4}, -1, 1, 1), rand_input({2, 3}, -1, 1, 2)});
  // src larger than index; non-contiguous self.
  EXPECT_GRADCHECK([index](auto& in) { return scatter_add(in[0].t(), 1, index, in[1]); },
                   {rand_input({4, 2}, -1, 1, 3), rand_input({3, 5}, -1, 1, 4)});
}

TEST(IndexGrad, IndexAdd) {
  const Tensor index = i64({1, 1, 0}, {3});
  EXPECT_GRADCHECK([index](auto& in) { return index_add(in[0], 0, index, in[1]); },
                   {rand_input({2, 4}, -1, 1, 1), rand_input({3, 4}, -1, 1, 2)});
  EXPECT_GRADCHECK([index](auto& in) { return index_add(in[0], 1, index, in[1].t()); },
                   {rand_input({4, 2}, -1, 1, 3), rand_input({3, 4}, -1, 1, 4)});
}

TEST(IndexGrad, Cat) {
  EXPECT_GRADCHECK(
      [](auto& in) {
        return cat({in[0], in[1], in[2]}, 0);
      },
      {rand_input({2, 3}, -1, 1, 1), rand_input({1, 3}, -1, 1, 2), rand_input({3, 3}, -1, 1, 3)});
  EXPECT_GRADCHECK(
      [](auto& in) {
        return cat({in[0].t(), in[1]}, 1);
      },
      {rand_input({2, 3}, -1, 1, 4), rand_input({3, 1}, -1, 1, 5)});
  // Inputs that need no gradient get none.
  Tensor a = rand_input({2, 2}, -1, 1, 6);
  Tensor b = random({2, 2}, 7);
  sum(cat({a, b}, 1)).backward();
  EXPECT_TRUE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

}  // namespace
}  // namespace kiln
