// matmul and bmm on CUDA (cuBLASLt) against the CPU (OpenBLAS), forward and backward.
// Inputs are drawn once, rounded to the dtype under test, and the same values go to both
// sides, so the only differences are accumulation order and output rounding.
//
// Tolerances, on max|cuda - cpu| relative to max|cpu| over the tensor:
//   f32  1e-4  K up to 1024, TF32 off (kiln's default); f32 accumulation on both sides.
//   bf16 1e-2  f32 accumulation on both sides; one output rounding is 2^-8 relative.
//   f16  5e-3  as bf16, with 2^-11 rounding.
//   f64  1e-12
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/matmul.cu,
// kernels/cuda/cublaslt_common.h, kernels/cuda/blas_handle.cu, kernels/cuda/blas_handle.h.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/generator.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_close;
using testing::max_abs;
using testing::randn_cpu;

using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;

double tolerance(DType t) {
  switch (t) {
    case DType::f32:
      return 1e-4;
    case DType::bf16:
      return 1e-2;
    case DType::f16:
      return 5e-3;
    default:
      return 1e-12;
  }
}

// f(a, b) on both devices, then backward from the same random output gradient.
void check_cpu_vs_cuda(const Shape& sa, const Shape& sb, DType dtype, const BinaryFn& f,
                       const std::string& what, uint64_t seed = 1) {
  const Device cuda("cuda:0");
  const std::string tag = what + " " + std::string(dtype_name(dtype));
  Tensor a = randn_cpu(sa, seed, dtype), b = randn_cpu(sb, seed + 1, dtype);
  Tensor ag = a.to(cuda), bg = b.to(cuda);
  a.requires_grad_(true);
  b.requires_grad_(true);
  ag.requires_grad_(true);
  bg.requires_grad_(true);

  const Tensor out = f(a, b);
  const Tensor out_g = f(ag, bg);
  const double rtol = tolerance(dtype);
  expect_close(out, out_g, rtol, tag + " forward");

  const Tensor w = randn_cpu(out.shape(), seed + 2, dtype);
  out.backward(w);
  out_g.backward(w.to(cuda));
  expect_close(a.grad(), ag.grad(), rtol, tag + " grad a");
  expect_close(b.grad(), bg.grad(), rtol, tag + " grad b");
}

const BinaryFn kMatmul = [](const Tensor& a, const Tensor& b) { return matmul(a, b); };

TEST(MatmulCuda, ShapeCasesF32AndBf16) {
  KILN_SKIP_WITHOUT_CUDA();
  struct Case {
    Shape a, b;
    const char* what;
  };
  const std::vector<Case> cases = {
      {{1024}, {1024}, "dot K=1024"},
      {{64, 128}, {128, 96}, "2-D"},
      {{33, 1024}, {1024, 65}, "2-D odd sizes K=1024"},
      {{1024}, {1024, 40}, "1-D @ 2-D"},
      {{40, 1024}, {1024}, "2-D @ 1-D"},
      {{4, 16, 256}, {256, 48}, "folded batch"},
      {{48, 256}, {4, 256, 16}, "2-D @ batched"},
      {{2, 1, 8, 64}, {3, 64, 16}, "broadcast batch"},
      {{3, 7, 5}, {3, 5, 9}, "tiny batched"},
  };
  for (DType t : {DType::f32, DType::bf16}) {
    uint64_t seed = 1;
    for (const Case& c : cases) {
      check_cpu_vs_cuda(c.a, c.b, t, kMatmul, c.what, seed);
      seed += 10;
    }
  }
}

TEST(MatmulCuda, TransposedAndOffsetViews) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    check_cpu_vs_cuda(
        {96, 64}, {80, 96}, t,
        [](const Tensor& a, const Tensor& b) { return matmul(a.t(), b.t()); }, "a^T @ b^T");
    check_cpu_vs_cuda(
        {4, 64, 32}, {4, 48, 64}, t,
        [](const Tensor& a, const Tensor& b) {
          return matmul(a.transpose(1, 2), b.transpose(1, 2));
        },
        "batched a^T @ b^T");
    // Views whose data starts 1 element into the buffer: cuBLASLt must be told the alignment.
    check_cpu_vs_cuda(
        {31, 257}, {256, 17}, t,
        [](const Tensor& a, const Tensor& b) { return matmul(a.narrow(1, 1, 256), b); },
        "offset view");
    // Neither row- nor column-major: copied first.
    check_cpu_vs_cuda(
        {32, 128}, {64, 24}, t,
        [](const Tensor& a, const Tensor& b) { return matmul(a.slice(1, 0, 128, 2), b); },
        "strided slice");
  }
}

TEST(MatmulCuda, Bmm) {
  KILN_SKIP_WITHOUT_CUDA();
  const BinaryFn f = [](const Tensor& a, const Tensor& b) { return bmm(a, b); };
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
    check_cpu_vs_cuda({8, 32, 64}, {8, 64, 40}, t, f, "bmm");
    check_cpu_vs_cuda({5, 1, 1024}, {5, 1024, 3}, t, f, "bmm K=1024");
  }
}

TEST(MatmulCuda, F16AndF64) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f16, DType::f64}) {
    check_cpu_vs_cuda({64, 512}, {512, 72}, t, kMatmul, "2-D");
    check_cpu_vs_cuda({2, 8, 128}, {128, 24}, t, kMatmul, "folded batch");
  }
}

TEST(MatmulCuda, EmptySizesAndErrors) {
  KILN_SKIP_WITHOUT_CUDA();
  const Device cuda("cuda:0");
  const Tensor z = matmul(zeros({3, 0}, {.device = cuda}), zeros({0, 4}, {.device = cuda}));
  EXPECT_EQ(z.shape(), (Shape{3, 4}));
  EXPECT_EQ(max_abs(z), 0.0);
  const Tensor ones_ = ones({3, 0}, {.device = cuda});  // K = 0 must overwrite, not accumulate
  EXPECT_EQ(max_abs(matmul(ones_, ones({0, 5}, {.device = cuda}))), 0.0);
  EXPECT_EQ(matmul(zeros({0, 5}, {.device = cuda}), zeros({5, 4}, {.device = cuda})).shape(),
            (Shape{0, 4}));
  EXPECT_THROW(matmul(zeros({2, 3}, {.device = cuda}), zeros({4, 5}, {.device = cuda})), Error);
  EXPECT_THROW(matmul(zeros({2, 3}, {.device = cuda}), zeros({3, 5})), Error);  // devices differ
}

TEST(MatmulCuda, RepeatedCallsAreBitwiseEqual) {
  KILN_SKIP_WITHOUT_CUDA();
  const Device cuda("cuda:0");
  const Tensor a = randn_cpu({128, 1024}, 1, DType::f32).to(cuda);
  const Tensor b = randn_cpu({1024, 256}, 2, DType::f32).to(cuda);
  const Tensor first = matmul(a, b).cpu();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(max_abs_diff(first, matmul(a, b).cpu()), 0.0);
}

}  // namespace
}  // namespace kiln
