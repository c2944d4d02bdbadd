// The core tensor: creation, views (shapes, strides, shared storage), copies, dtype
// conversions, item(), printing, Device parsing, and the errors that name shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"
#include "tests/expect_error.h"

namespace kiln {
namespace {

using testing::expect_error;

using Values = std::vector<double>;

const DType kAllDTypes[] = {DType::f32, DType::f16, DType::bf16, DType::f64,
                            DType::i32, DType::i64, DType::u8,   DType::b8};

// 0, 1, ..., n-1 as an f32 tensor of `shape`.
Tensor iota(const Shape& shape) {
  return arange(0.0, static_cast<double>(shape_numel(shape)), 1.0).view(shape);
}

// ---------------------------------------------------------------- creation

TEST(TensorCreation, ZerosOnesFullForEveryDType) {
  for (DType dt : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor z = zeros({2, 3}, {.dtype = dt});
    EXPECT_EQ(z.shape(), (Shape{2, 3}));
    EXPECT_EQ(z.strides(), (Shape{3, 1}));
    EXPECT_EQ(z.dtype(), dt);
    EXPECT_EQ(z.device(), kCPU);
    EXPECT_EQ(z.numel(), 6);
    EXPECT_EQ(z.element_size(), element_size(dt));
    EXPECT_TRUE(z.is_contiguous());
    EXPECT_FALSE(z.requires_grad());
    EXPECT_EQ(z.to_vector<double>(), Values(6, 0.0));
    EXPECT_EQ(ones({4}, {.dtype = dt}).to_vector<double>(), Values(4, 1.0));
    const double v = dt == DType::b8 ? 1.0 : 3.0;
    EXPECT_EQ(full({3, 1}, v, {.dtype = dt}).to_vector<double>(), Values(3, v));
  }
  EXPECT_EQ(full({2}, -2.5, {.dtype = DType::f64}).to_vector<double>(), (Values{-2.5, -2.5}));
  EXPECT_EQ(zeros_like(ones({2, 2}, {.dtype = DType::i32})).dtype(), DType::i32);
  EXPECT_EQ(ones_like(zeros({3}, {.dtype = DType::bf16})).to_vector<double>(), Values(3, 1.0));
}

TEST(TensorCreation, EmptyShapes) {
  Tensor s = empty({});
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_TRUE(s.strides().empty());

  Tensor e = empty({0, 3}, {.dtype = DType::f64});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.shape(), (Shape{0, 3}));
  EXPECT_EQ(e.dtype(), DType::f64);
  EXPECT_TRUE(e.to_vector<double>().empty());

  Tensor b = empty({5, 2}, {.dtype = DType::bf16});
  EXPECT_EQ(b.storage()->nbytes(), 5u * 2u * 2u);
  EXPECT_EQ(empty_like(b).shape(), b.shape());
  EXPECT_EQ(empty_like(b).dtype(), DType::bf16);

  expect_error([] { empty({2, -1, 3}); }, {"negative dimension", "[2, -1, 3]"});
}

TEST(TensorCreation, Arange) {
  Tensor a = arange(5);
  EXPECT_EQ(a.dtype(), DType::i64);
  EXPECT_EQ(a.shape(), (Shape{5}));
  EXPECT_EQ(a.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4}));

  Tensor f = arange(0.0, 1.0, 0.25);
  EXPECT_EQ(f.dtype(), DType::f32);
  EXPECT_EQ(f.to_vector<double>(), (Values{0.0, 0.25, 0.5, 0.75}));
  EXPECT_EQ(arange(3.0, 0.0, -1.0, {.dtype = DType::f64}).to_vector<double>(), (Values{3, 2, 1}));
  EXPECT_EQ(arange(1.0, 2.0, 0.3).numel(), 4);  // ceil((2 - 1) / 0.3)
  expect_error([] { arange(0.0, 1.0, 0.0); }, {"arange"});
  expect_error([] { arange(0.0, 1.0, -1.0); }, {"arange"});
}

TEST(TensorCreation, FromVector) {
  Tensor d = from_vector(Values{1.5, -2.0, 3.25, 4.0}, {2, 2}, {.dtype = DType::f64});
  EXPECT_EQ(d.dtype(), DType::f64);
  EXPECT_EQ(d.shape(), (Shape{2, 2}));
  EXPECT_EQ(d.to_vector<double>(), (Values{1.5, -2.0, 3.25, 4.0}));

  Tensor f = from_vector(std::vector<float>{0.5f, 1.0f, 2.0f}, {3});
  EXPECT_EQ(f.dtype(), DType::f32);
  EXPECT_EQ(f.to_vector<float>(), (std::vector<float>{0.5f, 1.0f, 2.0f}));

  Tensor i = from_vector(std::vector<int64_t>{-7, 0, 9}, {3, 1});
  EXPECT_EQ(i.dtype(), DType::i64);
  EXPECT_EQ(i.shape(), (Shape{3, 1}));
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{-7, 0, 9}));

  // opts.dtype converts on the way in.
  Tensor h = from_vector(Values{1.0, 2.0}, {2}, {.dtype = DType::bf16});
  EXPECT_EQ(h.dtype(), DType::bf16);
  EXPECT_EQ(h.to_vector<double>(), (Values{1.0, 2.0}));

  Tensor r = from_vector(Values{1.0, 2.0}, {2}, {.dtype = DType::f64, .requires_grad = true});
  EXPECT_TRUE(r.requires_grad());
  EXPECT_TRUE(r.is_leaf());

  expect_error([] { from_vector(Values{1, 2, 3}, {2, 2}); }, {"3 values", "[2, 2]"});
}

TEST(TensorCreation, ScalarTensorAndItem) {
  Tensor s = scalar_tensor(3.25, {.dtype = DType::f64});
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item(), 3.25);
  EXPECT_EQ(s.item<float>(), 3.25f);
  EXPECT_EQ(s.item<int64_t>(), 3);
  EXPECT_EQ(scalar_tensor(-7, {.dtype = DType::i64}).item<int64_t>(), -7);
  EXPECT_EQ(scalar_tensor(1, {.dtype = DType::b8}).item<bool>(), true);
  EXPECT_EQ(scalar_tensor(0.5, {.dtype = DType::bf16}).item(), 0.5);
  // A one-element tensor of any rank has an item; a view reads the element it points at.
  EXPECT_EQ(iota({2, 3}).select(0, 1).narrow(0, 2, 1).item(), 5.0);
  expect_error([] { ones({2}).item(); }, {"item()", "f32[2]"});
}

// ---------------------------------------------------------------- views

TEST(TensorViews, ViewSharesStorage) {
  Tensor x = iota({24});
  Tensor v = x.view({2, 3, 4});
  EXPECT_EQ(v.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(v.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(v.storage().get(), x.storage().get());
  EXPECT_EQ(v.data_ptr(), x.data_ptr());
  EXPECT_EQ(v.to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(x.view({-1, 4}).shape(), (Shape{6, 4}));
  EXPECT_EQ(x.view({2, -1, 3}).shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(v.view({24}).strides(), (Shape{1}));
  EXPECT_EQ(ones({1}).view({}).dim(), 0);

  // Writes through a view are visible in the base, and the version counter is shared.
  const uint32_t before = x.version();
  v.select(0, 1).select(0, 2).fill_(-1.0);  // elements 20..23
  EXPECT_EQ(x.to_vector<double>()[19], 19.0);
  EXPECT_EQ(x.to_vector<double>()[20], -1.0);
  EXPECT_EQ(x.to_vector<double>()[23], -1.0);
  EXPECT_GT(x.version(), before);
  EXPECT_EQ(v.version(), x.version());
}

TEST(TensorViews, ViewOfNonViewableStridesFailsAndReshapeCopies) {
  Tensor x = iota({4, 6});
  Tensor t = x.t();  // [6, 4], strides [1, 6]
  EXPECT_FALSE(t.is_contiguous());
  expect_error([&] { t.view({24}); }, {"view", "[6, 4]", "[24]", "reshape"});

  Tensor r = t.reshape({24});
  EXPECT_NE(r.storage().get(), x.storage().get());  // a copy
  EXPECT_TRUE(r.is_contiguous());
  Values expected;
  for (int j = 0; j < 6; ++j)
    for (int i = 0; i < 4; ++i) expected.push_back(i * 6 + j);
  EXPECT_EQ(r.to_vector<double>(), expected);

  // Where a view is possible, reshape is one: same storage, no copy.
  Tensor rv = x.reshape({2, 12});
  EXPECT_EQ(rv.storage().get(), x.storage().get());
  EXPECT_EQ(rv.strides(), (Shape{12, 1}));
  // A split of a transposed dim that keeps its stride pattern is still a view.
  Tensor split = t.view({3, 2, 4});
  EXPECT_EQ(split.storage().get(), x.storage().get());
  EXPECT_EQ(split.strides(), (Shape{2, 1, 6}));
  EXPECT_EQ(split.to_vector<double>(), expected);
}

TEST(TensorViews, ViewWithWrongNumelNamesTheShapes) {
  Tensor x = iota({2, 3, 4});
  expect_error([&] { x.view({5, 5}); }, {"view", "[5, 5]", "f32[2, 3, 4]"});
  expect_error([&] { x.reshape({7, -1}); }, {"reshape", "[7, -1]", "f32[2, 3, 4]"});
  expect_error([&] { x.view({-1, -1}); }, {"only one dimension can be -1"});
}

TEST(TensorViews, PermuteAndTranspose) {
  Tensor x = iota({2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  EXPECT_EQ(p.offset(), 0);
  EXPECT_EQ(p.storage().get(), x.storage().get());
  EXPECT_FALSE(p.is_contiguous());
  Values expected;
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j) expected.push_back(i * 12 + j * 4 + k);
  EXPECT_EQ(p.to_vector<double>(), expected);
  EXPECT_EQ(x.permute({-1, 0, 1}).strides(), p.strides());

  Tensor t = x.transpose(0, 2);
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(t.strides(), (Shape{1, 4, 12}));
  EXPECT_EQ(t.storage().get(), x.storage().get());
  EXPECT_EQ(t.transpose(0, 2).to_vector<double>(), x.to_vector<double>());

  Tensor m = iota({2, 3});
  EXPECT_EQ(m.t().shape(), (Shape{3, 2}));
  EXPECT_EQ(m.t().to_vector<double>(), (Values{0, 3, 1, 4, 2, 5}));

  expect_error([&] { x.permute({0, 1}); }, {"permute", "f32[2, 3, 4]"});
  expect_error([&] { x.permute({0, 1, 1}); }, {"permute", "repeated"});
  expect_error([&] { x.transpose(0, 3); }, {"transpose", "3", "out of range"});
}

TEST(TensorViews, SliceWithStep) {
  Tensor x = iota({10});
  Tensor s = x.slice(0, 1, 8, 3);
  EXPECT_EQ(s.shape(), (Shape{3}));
  EXPECT_EQ(s.strides(), (Shape{3}));
  EXPECT_EQ(s.offset(), 1);
  EXPECT_EQ(s.storage().get(), x.storage().get());
  EXPECT_EQ(s.to_vector<double>(), (Values{1, 4, 7}));
  EXPECT_EQ(x.slice(0, -3, 10).to_vector<double>(), (Values{7, 8, 9}));
  EXPECT_EQ(x.slice(0, 8, 100).to_vector<double>(), (Values{8, 9}));  // end clamps
  EXPECT_EQ(x.slice(0, 5, 2).numel(), 0);

  Tensor m = iota({3, 5});
  Tensor c = m.slice(1, 0, 5, 2);  // columns 0, 2, 4
  EXPECT_EQ(c.shape(), (Shape{3, 3}));
  EXPECT_EQ(c.strides(), (Shape{5, 2}));
  EXPECT_EQ(c.to_vector<double>(), (Values{0, 2, 4, 5, 7, 9, 10, 12, 14}));
  // A slice of a slice composes offsets and strides.
  Tensor cc = c.slice(0, 1, 3).slice(1, 1, 3);
  EXPECT_EQ(cc.offset(), 7);
  EXPECT_EQ(cc.to_vector<double>(), (Values{7, 9, 12, 14}));

  c.fill_(0.0);  // writes through to every other column of m
  EXPECT_EQ(m.to_vector<double>(), (Values{0, 1, 0, 3, 0, 0, 6, 0, 8, 0, 0, 11, 0, 13, 0}));
  expect_error([&] { x.slice(0, 0, 5, 0); }, {"slice", "step"});
}

TEST(TensorViews, NarrowAndSelect) {
  Tensor m = iota({3, 4});
  Tensor n = m.narrow(1, 1, 2);
  EXPECT_EQ(n.shape(), (Shape{3, 2}));
  EXPECT_EQ(n.strides(), (Shape{4, 1}));
  EXPECT_EQ(n.offset(), 1);
  EXPECT_EQ(n.storage().get(), m.storage().get());
  EXPECT_EQ(n.to_vector<double>(), (Values{1, 2, 5, 6, 9, 10}));
  expect_error([&] { m.narrow(1, 3, 2); }, {"narrow", "f32[3, 4]"});

  Tensor x = iota({2, 3, 4});
  Tensor s0 = x.select(0, 1);
  EXPECT_EQ(s0.shape(), (Shape{3, 4}));
  EXPECT_EQ(s0.strides(), (Shape{4, 1}));
  EXPECT_EQ(s0.offset(), 12);
  EXPECT_EQ(s0.storage().get(), x.storage().get());
  Tensor s2 = x.select(-1, 3);
  EXPECT_EQ(s2.shape(), (Shape{2, 3}));
  EXPECT_EQ(s2.strides(), (Shape{12, 4}));
  EXPECT_EQ(s2.to_vector<double>(), (Values{3, 7, 11, 15, 19, 23}));
  EXPECT_EQ(x.select(1, -1).to_vector<double>(), (Values{8, 9, 10, 11, 20, 21, 22, 23}));
  expect_error([&] { x.select(1, 3); }, {"select", "index 3", "f32[2, 3, 4]"});
}

TEST(TensorViews, Expand) {
  Tensor c = from_vector(Values{1, 2, 3}, {3, 1});
  Tensor e = c.expand({2, 3, 4});
  EXPECT_EQ(e.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(e.strides(), (Shape{0, 1, 0}));
  EXPECT_EQ(e.storage().get(), c.storage().get());
  Values expected;
  for (int i = 0; i < 2; ++i)
    for (int j = 1; j <= 3; ++j)
      for (int k = 0; k < 4; ++k) expected.push_back(j);
  EXPECT_EQ(e.to_vector<double>(), expected);
  EXPECT_EQ(c.expand({-1, 2}).shape(), (Shape{3, 2}));
  EXPECT_FALSE(e.is_contiguous());

  // contiguous() of an expanded tensor materialises every element.
  Tensor m = e.contiguous();
  EXPECT_NE(m.storage().get(), c.storage().get());
  EXPECT_EQ(m.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(m.to_vector<double>(), expected);

  expect_error([&] { c.expand({3, 4}).expand({2, 4}); }, {"expand", "[2, 4]"});
  expect_error([&] { iota({3}).expand({2, 2}); }, {"expand", "f32[3]", "[2, 2]"});
  expect_error([&] { iota({2, 3}).expand({3}); }, {"expand", "f32[2, 3]"});
}

TEST(TensorViews, SqueezeUnsqueezeFlatten) {
  Tensor x = iota({2, 1, 3});
  Tensor s = x.squeeze(1);
  EXPECT_EQ(s.shape(), (Shape{2, 3}));
  EXPECT_EQ(s.strides(), (Shape{3, 1}));
  EXPECT_EQ(s.storage().get(), x.storage().get());
  EXPECT_EQ(x.squeeze(0).shape(), (Shape{2, 1, 3}));  // size 2: unchanged
  EXPECT_EQ(x.squeeze().shape(), (Shape{2, 3}));
  EXPECT_EQ(iota({1, 1}).squeeze().dim(), 0);

  Tensor u0 = s.unsqueeze(0);
  EXPECT_EQ(u0.shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(u0.storage().get(), x.storage().get());
  Tensor u_last = s.unsqueeze(-1);
  EXPECT_EQ(u_last.shape(), (Shape{2, 3, 1}));
  EXPECT_EQ(u_last.to_vector<double>(), s.to_vector<double>());
  EXPECT_EQ(s.unsqueeze(1).shape(), (Shape{2, 1, 3}));

  Tensor y = iota({2, 3, 4});
  Tensor f = y.flatten();
  EXPECT_EQ(f.shape(), (Shape{24}));
  EXPECT_EQ(f.storage().get(), y.storage().get());
  EXPECT_EQ(y.flatten(1).shape(), (Shape{2, 12}));
  EXPECT_EQ(y.flatten(0, 1).shape(), (Shape{6, 4}));
  EXPECT_EQ(scalar_tensor(1.0).flatten().shape(), (Shape{1}));
  // Flattening a permuted tensor copies, in the permuted order.
  Tensor pf = y.permute({2, 0, 1}).flatten();
  EXPECT_NE(pf.storage().get(), y.storage().get());
  EXPECT_EQ(pf.to_vector<double>(), y.permute({2, 0, 1}).to_vector<double>());
  expect_error([&] { y.flatten(2, 1); }, {"flatten"});
}

TEST(TensorViews, ContiguousCopiesOnlyWhenNeeded) {
  Tensor x = iota({3, 4});
  EXPECT_EQ(x.contiguous().impl(), x.impl());  // itself
  // Size-1 dims do not make a tensor non-contiguous whatever their stride.
  EXPECT_TRUE(x.select(0, 1).unsqueeze(0).is_contiguous());

  Tensor t = x.t();
  Tensor c = t.contiguous();
  EXPECT_NE(c.storage().get(), x.storage().get());
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.strides(), (Shape{3, 1}));
  EXPECT_EQ(c.offset(), 0);
  EXPECT_EQ(c.to_vector<double>(), t.to_vector<double>());
  EXPECT_EQ(c.dtype(), DType::f32);

  // clone() always copies.
  Tensor k = x.clone();
  EXPECT_NE(k.storage().get(), x.storage().get());
  k.fill_(7.0);
  EXPECT_EQ(x.to_vector<double>()[0], 0.0);
}

TEST(TensorViews, CopyIntoAStridedDestination) {
  Tensor dst = zeros({3, 4});
  dst.t().copy_(iota({4, 3}));  // dst[i][j] = src[j][i] = j * 3 + i
  Values expected;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) expected.push_back(j * 3 + i);
  EXPECT_EQ(dst.to_vector<double>(), expected);

  // copy_ broadcasts and converts.
  Tensor b = zeros({2, 3}, {.dtype = DType::f64});
  b.copy_(from_vector(std::vector<int64_t>{4, 5, 6}, {3}));
  EXPECT_EQ(b.to_vector<double>(), (Values{4, 5, 6, 4, 5, 6}));
}

// ---------------------------------------------------------------- dtypes

TEST(TensorDTypes, RoundTripsThroughEveryDType) {
  const Values values{0, 1, 2, 3, 5, 100, 7, 64};
  const Tensor src = from_vector(values, {2, 4}, {.dtype = DType::f32});
  for (DType dt : kAllDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor c = src.to(dt);
    EXPECT_EQ(c.dtype(), dt);
    EXPECT_EQ(c.shape(), src.shape());
    if (dt != DType::f32) EXPECT_NE(c.storage().get(), src.storage().get());
    Tensor back = c.to(DType::f32);
    if (dt == DType::b8) {
      EXPECT_EQ(back.to_vector<double>(), (Values{0, 1, 1, 1, 1, 1, 1, 1}));
    } else {
      EXPECT_EQ(back.to_vector<double>(), values);
    }
    // Every other dtype from this one, also through a non-contiguous view.
    for (DType dt2 : kAllDTypes) {
      if (dt == DType::b8 || dt2 == DType::b8) continue;
      EXPECT_EQ(c.t().to(dt2).to_vector<double>(), src.t().to_vector<double>())
          << dtype_name(dt) << " -> " << dtype_name(dt2);
    }
  }
  EXPECT_EQ(src.to(DType::f32).impl(), src.impl());  // same dtype: itself
}

TEST(TensorDTypes, SixteenBitRounding) {
  // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7; ties go to even.
  auto bf16 = [](double v) {
    return from_vector(Values{v}, {1}, {.dtype = DType::f64}).to(DType::bf16).to(DType::f64).item();
  };
  EXPECT_EQ(bf16(1.00390625), 1.0);
  EXPECT_EQ(bf16(1.0078125), 1.0078125);       // 1 + 2^-7: exact
  EXPECT_EQ(bf16(1.01171875), 1.015625);       // 1 + 3*2^-8: tie, rounds up to even
  EXPECT_EQ(bf16(1.005), 1.0078125);           // above the tie: rounds up
  EXPECT_EQ(bf16(3.0e38), 3.00405527047391e+38);  // f32's exponent range (value from PyTorch)
  EXPECT_TRUE(std::isnan(bf16(std::nan(""))));

  auto f16 = [](double v) {
    return from_vector(Values{v}, {1}, {.dtype = DType::f64}).to(DType::f16).to(DType::f64).item();
  };
  EXPECT_EQ(f16(65504.0), 65504.0);  // the largest f16
  EXPECT_EQ(f16(65519.0), 65504.0);  // below the tie: stays finite
  EXPECT_EQ(f16(65520.0), std::numeric_limits<double>::infinity());  // tie: rounds to inf
  EXPECT_EQ(f16(-1e6), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(f16(1.0 + 1.0 / 2048), 1.0);              // tie at 2^-11: to even
  EXPECT_EQ(f16(1.0 + 3.0 / 2048), 1.0 + 2.0 / 1024);  // tie: up to even
  EXPECT_EQ(f16(std::ldexp(1.0, -24)), std::ldexp(1.0, -24));  // smallest subnormal
  EXPECT_EQ(f16(std::ldexp(1.0, -26)), 0.0);
  EXPECT_TRUE(std::isnan(f16(std::nan(""))));
}

TEST(TensorDTypes, FloatToIntegerTruncatesAndBoolIsNonzero) {
  Tensor x = from_vector(Values{2.7, -2.7, 0.0, 0.25}, {4}, {.dtype = DType::f64});
  EXPECT_EQ(x.to(DType::i64).to_vector<int64_t>(), (std::vector<int64_t>{2, -2, 0, 0}));
  EXPECT_EQ(x.to(DType::i32).to_vector<int64_t>(), (std::vector<int64_t>{2, -2, 0, 0}));
  EXPECT_EQ(x.to(DType::b8).to_vector<double>(), (Values{1, 1, 0, 1}));
  EXPECT_EQ(from_vector(std::vector<int64_t>{1LL << 40}, {1}).to(DType::f64).item(),
            std::ldexp(1.0, 40));
}

TEST(TensorDTypes, ParseAndNames) {
  EXPECT_EQ(parse_dtype("bfloat16"), DType::bf16);
  EXPECT_EQ(parse_dtype("f16"), DType::f16);
  EXPECT_EQ(parse_dtype("float32"), DType::f32);
  EXPECT_EQ(parse_dtype("bool"), DType::b8);
  EXPECT_EQ(dtype_name(DType::b8), "bool");
  expect_error([] { parse_dtype("float128"); }, {"unknown dtype", "float128"});
  EXPECT_EQ(promote_types(DType::f16, DType::bf16), DType::f32);
  EXPECT_EQ(promote_types(DType::i64, DType::bf16), DType::bf16);
  EXPECT_EQ(promote_types(DType::f32, DType::f64), DType::f64);
}

TEST(TensorDTypes, DataAccessorChecksTheType) {
  Tensor x = ones({2}, {.dtype = DType::f64});
  EXPECT_EQ(x.data<double>()[1], 1.0);
  expect_error([&] { x.data<float>(); }, {"data<f32>", "f64[2]"});
}

// ---------------------------------------------------------------- printing

TEST(TensorPrinting, MatchesPyTorchLayout) {
  const std::string f32 = iota({2, 2}).str();
  EXPECT_NE(f32.find("tensor([["), std::string::npos) << f32;
  EXPECT_NE(f32.find("3.0000"), std::string::npos) << f32;
  EXPECT_EQ(f32.find("dtype"), std::string::npos) << f32;  // f32 is the default: not printed
  EXPECT_EQ(f32.find("device"), std::string::npos) << f32;

  const std::string f64 = ones({2, 3}, {.dtype = DType::f64}).str();
  EXPECT_NE(f64.find("tensor([["), std::string::npos) << f64;
  EXPECT_NE(f64.find("dtype=f64"), std::string::npos) << f64;

  EXPECT_EQ(arange(3).str(), "tensor([0, 1, 2], dtype=i64)");
  EXPECT_EQ(scalar_tensor(2.5).str(), "tensor(2.5000)");
  EXPECT_NE(ones({2}, {.dtype = DType::bf16}).str().find("dtype=bf16"), std::string::npos);

  const std::string rg = ones({2}, {.requires_grad = true}).str();
  EXPECT_NE(rg.find("requires_grad=True"), std::string::npos) << rg;

  // Big tensors are summarised.
  const std::string big = zeros({2000}).str();
  EXPECT_NE(big.find("..."), std::string::npos);
  EXPECT_LT(big.size(), 200u);

  std::ostringstream os;
  os << iota({2});
  EXPECT_EQ(os.str(), iota({2}).str());
  EXPECT_EQ(Tensor().str(), "tensor(undefined)");
  EXPECT_EQ(iota({2, 3}).meta_str(), "f32[2, 3] on cpu");
}

// ---------------------------------------------------------------- devices

TEST(TensorDevice, Parsing) {
  Device d("cuda:1");
  EXPECT_TRUE(d.is_cuda());
  EXPECT_EQ(d.index, 1);
  EXPECT_EQ(d.str(), "cuda:1");
  EXPECT_EQ(Device("cuda"), Device(DeviceType::CUDA, 0));
  EXPECT_EQ(Device("cpu"), kCPU);
  EXPECT_TRUE(Device(std::string("cuda:12")).is_cuda());
  EXPECT_EQ(Device::parse("cuda:12").index, 12);
  EXPECT_EQ(kCPU.str(), "cpu");
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CPU", "", "cuda1"})
    expect_error([&] { Device::parse(bad); }, {"bad device", std::string("'") + bad + "'"});
}

TEST(TensorDevice, CpuTensorsStayPut) {
  Tensor x = ones({2});
  EXPECT_EQ(x.to(kCPU).impl(), x.impl());
  EXPECT_EQ(x.cpu().impl(), x.impl());
  EXPECT_FALSE(x.is_cuda());
}

TEST(TensorErrors, UndefinedTensor) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  expect_error([&] { (void)t.shape(); }, {"undefined tensor"});
}

}  // namespace
}  // namespace kiln
