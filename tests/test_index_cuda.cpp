// Indexing and cat on CUDA against the CPU, forward and backward, in f32 and bf16 (plus an
// integer dtype), and the device-side index check.
//
// Tolerances, on max|cuda - cpu| relative to max|cpu|:
//   index_select, gather, cat forward: exact (they copy). cat's backward adds the two
//   gradients of an input used twice: the add tolerance.
//   index_add, scatter_add: CUDA adds with atomics in no fixed order, so repeated indices
//   round differently: f32 1e-5, bf16 1e-2 (every add rounds to bf16 on both sides).
//   Backward passes inherit the tolerance of the op they run (select <-> add).
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/index.cu.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/generator.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::expect_close;
using testing::kCuda;
using testing::randn_cpu;

using UnaryFn = std::function<Tensor(const Tensor&)>;
using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;

Tensor random_index(int64_t high, const Shape& shape, uint64_t seed, DType dtype = DType::i64) {
  Generator gen(seed);
  return randint(0, high, shape, {.dtype = dtype}, &gen);
}

double add_tolerance(DType t) { return t == DType::bf16 ? 1e-2 : 1e-5; }

// f(x) on both devices (index tensors captured by f are moved along by `f_for`), then
// backward from one random output gradient. rtol_fwd/rtol_bwd as in the header.
void check_unary(const Tensor& x0, const std::function<UnaryFn(Device)>& f_for, double rtol_fwd,
                 double rtol_bwd, const std::string& what) {
  Tensor x = x0.detach(), xg = x0.to(kCuda);
  x.requires_grad_(true);
  xg.requires_grad_(true);
  const Tensor out = f_for(kCPU)(x), out_g = f_for(kCuda)(xg);
  expect_close(out, out_g, rtol_fwd, what + " forward");
  const Tensor w = randn_cpu(out.shape(), 99, out.dtype());
  out.backward(w);
  out_g.backward(w.to(kCuda));
  expect_close(x.grad(), xg.grad(), rtol_bwd, what + " backward");
}

void check_binary(const Tensor& a0, const Tensor& b0, const std::function<BinaryFn(Device)>& f_for,
                  double rtol_fwd, double rtol_bwd, const std::string& what) {
  Tensor a = a0.detach(), b = b0.detach(), ag = a0.to(kCuda), bg = b0.to(kCuda);
  for (Tensor* t : {&a, &b, &ag, &bg}) t->requires_grad_(true);
  const Tensor out = f_for(kCPU)(a, b), out_g = f_for(kCuda)(ag, bg);
  expect_close(out, out_g, rtol_fwd, what + " forward");
  const Tensor w = randn_cpu(out.shape(), 98, out.dtype());
  out.backward(w);
  out_g.backward(w.to(kCuda));
  expect_close(a.grad(), ag.grad(), rtol_bwd, what + " backward self");
  expect_close(b.grad(), bg.grad(), rtol_bwd, what + " backward src");
}

TEST(IndexCuda, IndexSelect) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string dt(dtype_name(t));
    const double rb = add_tolerance(t);
    // Embedding-like rows: 768 f32 = 16-byte words; repeated indices in the backward.
    const Tensor index = random_index(100, {512}, 1);
    check_unary(
        randn_cpu({100, 768}, 2, t),
        [&](Device d) {
          return [i = index.to(d)](const Tensor& x) { return index_select(x, 0, i); };
        },
        0.0, rb, "embedding rows " + dt);
    // Odd row sizes (3 elements) and a middle dim: narrow word copies.
    const Tensor idx32 = random_index(5, {7}, 3, DType::i32);
    check_unary(
        randn_cpu({4, 5, 3}, 4, t),
        [&](Device d) {
          return [i = idx32.to(d)](const Tensor& x) { return index_select(x, 1, i); };
        },
        0.0, rb, "middle dim, i32 index " + dt);
    // The last dim (inner = 1) and a non-contiguous input.
    check_unary(
        randn_cpu({6, 9}, 5, t),
        [&](Device d) {
          return [i = idx32.to(d)](const Tensor& x) { return index_select(x.t(), 1, i); };
        },
        0.0, rb, "last dim of a transpose " + dt);
  }
  // Integer data goes through the same byte copies.
  const Tensor xi = arange(60).view({6, 10});
  const Tensor index = random_index(6, {8}, 6);
  EXPECT_EQ(max_abs_diff(index_select(xi, 0, index),
                         index_select(xi.to(kCuda), 0, index.to(kCuda)).cpu()),
            0.0);
}

TEST(IndexCuda, Gather) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string dt(dtype_name(t));
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape shape = {5, 6, 7};
      shape[dim] = 11;
      const Tensor index = random_index(Shape{8, 9, 10}[dim], shape, 10 + dim);
      check_unary(
          randn_cpu({8, 9, 10}, 20 + dim, t),
          [&](Device d) {
            return [i = index.to(d), dim](const Tensor& x) { return gather(x, dim, i); };
          },
          0.0, add_tolerance(t), "dim " + std::to_string(dim) + " " + dt);
    }
  }
}

TEST(IndexCuda, ScatterAdd) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string dt(dtype_name(t));
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape shape = {5, 6, 7};
      shape[dim] = 30;  // many repeats per target
      const Tensor index = random_index(Shape{8, 9, 10}[dim], shape, 30 + dim);
      check_binary(
          randn_cpu({8, 9, 10}, 40 + dim, t), randn_cpu({30, 30, 30}, 50 + dim, t),
          [&](Device d) {
            return [i = index.to(d), dim](const Tensor& self, const Tensor& src) {
              return scatter_add(self, dim, i, src);
            };
          },
          add_tolerance(t), 0.0, "dim " + std::to_string(dim) + " " + dt);
    }
  }
}

TEST(IndexCuda, IndexAdd) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string dt(dtype_name(t));
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape shape = {8, 9, 64};
      const int64_t size = shape[dim];
      shape[dim] = 40;
      const Tensor index = random_index(size, {40}, 60 + dim);
      check_binary(
          randn_cpu({8, 9, 64}, 70 + dim, t), randn_cpu(shape, 80 + dim, t),
          [&](Device d) {
            return [i = index.to(d), dim](const Tensor& self, const Tensor& src) {
              return index_add(self, dim, i, src);
            };
          },
          add_tolerance(t), 0.0, "dim " + std::to_string(dim) + " " + dt);
    }
  }
  // Integer accumulation is exact in any order.
  const Tensor self = arange(20).view({4, 5}), src = arange(30).view({6, 5});
  const Tensor index = random_index(4, {6}, 7);
  EXPECT_EQ(max_abs_diff(index_add(self, 0, index, src),
                         index_add(self.to(kCuda), 0, index.to(kCuda), src.to(kCuda)).cpu()),
            0.0);
}

TEST(IndexCuda, Cat) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    check_binary(
        randn_cpu({3, 5, 4}, 1, t), randn_cpu({3, 2, 4}, 2, t),
        [](Device) { return [](const Tensor& a, const Tensor& b) {
                       return cat({a, b, a}, 1);
                     }; },
        0.0, add_tolerance(t), "cat dim 1 " + std::string(dtype_name(t)));
    check_binary(
        randn_cpu({4, 3}, 3, t), randn_cpu({2, 4}, 4, t),
        [](Device) { return [](const Tensor& a, const Tensor& b) {
                       return cat({a.t(), b}, 0);
                     }; },
        0.0, add_tolerance(t), "cat transposed " + std::string(dtype_name(t)));
  }
}

TEST(IndexCuda, OutOfRangeIndexThrowsLikeTheCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = randn_cpu({3, 4}, 1, DType::f32).to(kCuda);
  const Tensor bad = from_vector(std::vector<int64_t>{0, 7, 1}, {3}).to(kCuda);
  const Tensor bad2 = from_vector(std::vector<int64_t>{0, 7, 1, 2}, {1, 4}).to(kCuda);
  const std::vector<std::function<void()>> calls = {
      [&] { index_select(x, 0, bad); },
      [&] { gather(x, 0, bad2); },
      [&] { scatter_add(x, 0, bad2, x); },
      [&] {
        index_add(x, 0, bad, zeros({3, 4}, {.device = kCuda}));
      },
  };
  for (const auto& call : calls) {
    const std::string e = error_of(call);
    EXPECT_NE(e.find("index 7"), std::string::npos) << e;
    EXPECT_NE(e.find("size 3"), std::string::npos) << e;
  }
  // Negative indices are out of range too, and the context is still usable afterwards.
  const Tensor neg = from_vector(std::vector<int64_t>{-2}, {1}).to(kCuda);
  EXPECT_NE(error_of([&] { index_select(x, 1, neg); }).find("index -2"), std::string::npos);
  const Tensor ok = from_vector(std::vector<int64_t>{2}, {1}).to(kCuda);
  EXPECT_EQ(max_abs_diff(index_select(x, 0, ok).cpu(), x.cpu().narrow(0, 2, 1)), 0.0);
}

}  // namespace
}  // namespace kiln
