// CUDA linear against the CPU kernels, forward and backward (dx, dw, db), for every epilogue
// (none, BIAS, GELU_AUX, GELU_AUX_BIAS; BGRADB for the bias gradient), in f32, bf16, bf16
// under autocast (f32 parameters, f32 gradients) and f64 (the composed fallback).
//
// Tolerances. Both devices read identical inputs and accumulate in f32 (f64 for f64), in
// different orders: f32 agrees to ~1e-6 relative (checked at 1e-5, plus 1e-5 of the largest
// value for sums that cancel to near zero); bf16 to one bf16 rounding (2^-8; checked at 2e-2
// with 2e-3 of the largest value), since each side rounds its f32 result once. The GELU input
// saved in bf16 may differ by one rounding between the devices, which the bf16 tolerance of
// the gradients covers. TF32 stays off (the default), so f32 GEMMs are full f32.
//
// Poisoning: before each op the caching allocator's blocks are filled with 0xFF bytes (NaN in
// every float dtype), and the kernel-level test hands the kernels NaN-filled outputs, so an
// element an epilogue forgets to write shows up as a NaN (NaN never passes here).
//
// Shapes: GPT-2's MLP (768 -> 3072 with GELU, 3072 -> 768), an attention projection, widths
// that are not multiples of 8 (cuBLASLt's GELU aux needs them: the op falls back), batched
// [B, T, C] inputs, a sliced input read in place and a transposed weight.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/linear.cu,
// kernels/cuda/cublaslt_common.h, kernels/cuda/blas_handle.cu, kernels/cuda/blas_handle.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/dispatch/linear.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_matches;
using testing::kCuda;
using testing::nan_like;
using testing::random_cpu;
using testing::Tolerance;

Tolerance tolerance(DType dtype) {
  switch (dtype) {
    case DType::bf16: return {.rtol = 2e-2, .atol_scale = 2e-3, .equal_values_pass = false};
    case DType::f64: return {.rtol = 1e-12, .atol_scale = 1e-12, .equal_values_pass = false};
    default: return {.rtol = 1e-5, .atol_scale = 1e-5, .equal_values_pass = false};
  }
}

// Poisons the small sizes and the large ones this file's outputs use (GPT-2 sized activations).
void poison_device_cache() {
  testing::poison_device_blocks(
      {testing::kSmallDeviceBlocks, {{int64_t{4} << 20, int64_t{12} << 20, int64_t{48} << 20}, 3}});
}

const char* act_name(Activation act) { return act == Activation::gelu ? "gelu" : "none"; }

struct LinearCase {
  Shape x_shape;
  int64_t out;
  const char* what;
  bool slice_input = false;       // x is a narrow() of a wider tensor: rows with a longer stride
  bool transposed_weight = false; // w is the .t() of an [in, out] tensor (the op copies it)
};

std::vector<LinearCase> linear_cases() {
  return {
      {{64, 768}, 3072, "GPT-2 fc"},
      {{64, 3072}, 768, "GPT-2 proj"},
      {{2, 9, 64}, 192, "batched [B, T, C], qkv-like"},
      {{37, 48}, 40, "odd rows"},
      {{5, 33}, 17, "out not a multiple of 8: GELU falls back"},
      {{1, 16}, 8, "one row"},
      {{3, 4, 24}, 16, "sliced input", true},
      {{6, 32}, 24, "transposed weight", false, true},
  };
}

// Runs linear on the CPU and CUDA from the same values, compares y and the gradients of every
// input. The leaves are the base tensors: x is a narrow() of a wider one for sliced inputs,
// w the .t() of an [in, out] one for transposed weights, made on each device so the views
// reach the op as views.
void compare_devices(const LinearCase& c, DType dtype, bool with_bias, Activation act, uint64_t seed,
                     bool autocast) {
  const int64_t in = c.x_shape.back();
  const DType param_dtype = autocast ? DType::f32 : dtype;
  const std::string what = std::string(c.what) + " " + shape_str(c.x_shape) + " -> " + std::to_string(c.out) +
                           " " + std::string(dtype_name(dtype)) + (autocast ? " autocast" : "") +
                           (with_bias ? " bias" : "") + " act " + act_name(act);
  // Values drawn in `dtype`, so under autocast both devices cast the same numbers exactly.
  Shape x_base_shape = c.x_shape;
  if (c.slice_input) x_base_shape.back() += 8;
  const Tensor x0 = random_cpu(x_base_shape, -1, 1, dtype, seed).to(param_dtype);
  const double scale = 1.0 / std::sqrt(double(in));
  const Shape w_base_shape = c.transposed_weight ? Shape{in, c.out} : Shape{c.out, in};
  const Tensor w0 = random_cpu(w_base_shape, -scale, scale, dtype, seed + 1).to(param_dtype);
  const Tensor b0 = with_bias ? random_cpu({c.out}, -0.5, 0.5, dtype, seed + 2).to(param_dtype) : Tensor();
  Shape y_shape = c.x_shape;
  y_shape.back() = c.out;
  const Tensor g = random_cpu(y_shape, -1, 1, dtype, seed + 3);

  struct Run {
    Tensor x, w, b, y;  // leaves and output
  };
  auto run = [&](Device device) {
    Run r;
    r.x = x0.to(device).detach().requires_grad_(true);
    r.w = w0.to(device).detach().requires_grad_(true);
    if (with_bias) r.b = b0.to(device).detach().requires_grad_(true);
    const Tensor x = c.slice_input ? r.x.narrow(-1, 3, in) : r.x;
    const Tensor w = c.transposed_weight ? r.w.t() : r.w;
    if (device.is_cuda()) poison_device_cache();
    {
      AutocastGuard guard(DType::bf16, autocast);
      r.y = linear(x, w, r.b, act);
    }
    if (device.is_cuda()) poison_device_cache();
    r.y.backward(g.to(device));
    return r;
  };
  const Run cpu = run(kCPU), gpu = run(kCuda);
  ASSERT_EQ(gpu.y.dtype(), dtype) << what;
  const Tolerance tol = tolerance(dtype);
  expect_matches(gpu.y, cpu.y, tol, what + " forward");
  // Gradients land in the parameters' dtype: f32 under autocast, where bf16 products limit them.
  const Tolerance grad_tol = autocast ? tolerance(DType::bf16) : tol;
  expect_matches(gpu.x.grad(), cpu.x.grad(), grad_tol, what + " dx");
  expect_matches(gpu.w.grad(), cpu.w.grad(), grad_tol, what + " dw");
  if (with_bias) expect_matches(gpu.b.grad(), cpu.b.grad(), grad_tol, what + " db");
}

TEST(LinearCuda, EveryEpilogueMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16})
    for (const LinearCase& c : linear_cases())
      for (bool with_bias : {false, true})
        for (Activation act : {Activation::none, Activation::gelu})
          compare_devices(c, dtype, with_bias, act, seed += 10, /*autocast=*/false);
}

TEST(LinearCuda, AutocastMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 5000;
  for (const LinearCase& c : linear_cases())
    for (Activation act : {Activation::none, Activation::gelu})
      compare_devices(c, DType::bf16, /*with_bias=*/true, act, seed += 10, /*autocast=*/true);
}

TEST(LinearCuda, F64ComposedFallbackMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const LinearCase c{{3, 5, 16}, 24, "f64"};
  for (Activation act : {Activation::none, Activation::gelu})
    compare_devices(c, DType::f64, /*with_bias=*/true, act, 9000, /*autocast=*/false);
}

// The kernels themselves, with NaN-filled outputs: every element written, and the fused
// cuBLASLt path taken (not the composed fallback) for GPT-2's shapes in bf16 and f32.
TEST(LinearCuda, KernelsWriteEveryElementOnTheFusedPath) {
  KILN_SKIP_WITHOUT_CUDA();
  NoGradGuard no_grad;
  uint64_t seed = 7000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (bool with_bias : {false, true}) {
      for (Activation act : {Activation::none, Activation::gelu}) {
        const std::string what = std::string(dtype_name(dtype)) + (with_bias ? " bias" : "") + " act " + act_name(act);
        const int64_t n = 96, in = 768, out = 3072;
        const Tensor x = random_cpu({n, in}, -1, 1, dtype, ++seed);
        const Tensor w = random_cpu({out, in}, -0.05, 0.05, dtype, ++seed);
        const Tensor b = with_bias ? random_cpu({out}, -0.5, 0.5, dtype, ++seed) : Tensor();
        const bool gelu = act == Activation::gelu;
        Tensor y = nan_like(empty({n, out}, {.dtype = dtype}));
        Tensor pre = gelu ? nan_like(y) : Tensor();
        ASSERT_TRUE(linear_stub(kCPU, y, pre, x, w, b, act)) << what;
        Tensor yc = y.to(kCuda).fill_(std::nan(""));
        Tensor prec = gelu ? pre.to(kCuda).fill_(std::nan("")) : Tensor();
        ASSERT_TRUE(linear_stub(kCuda, yc, prec, x.to(kCuda), w.to(kCuda), b.defined() ? b.to(kCuda) : Tensor(), act))
            << what << ": cuBLASLt offered no algorithm for the epilogue";
        expect_matches(yc, y, tol, what + " out");
        if (gelu) expect_matches(prec, pre, tol, what + " GELU input (aux)");

        // dw = dz^T x with the bias gradient from BGRADB.
        const Tensor dz = random_cpu({n, out}, -1, 1, dtype, ++seed);
        Tensor dw = nan_like(empty({out, in}, {.dtype = dtype}));
        Tensor db = with_bias ? nan_like(empty({out}, {.dtype = dtype})) : Tensor();
        ASSERT_TRUE(linear_weight_grad_stub(kCPU, dw, db, dz, x)) << what;
        Tensor dwc = dw.to(kCuda).fill_(std::nan(""));
        Tensor dbc = with_bias ? db.to(kCuda).fill_(std::nan("")) : Tensor();
        const bool fused = linear_weight_grad_stub(kCuda, dwc, dbc, dz.to(kCuda), x.to(kCuda));
        if (dtype == DType::bf16) {
          ASSERT_TRUE(fused) << what << ": cuBLASLt offered no algorithm for the weight gradient (BGRADB)";
        } else if (!fused) {
          std::printf("note: %s weight gradient took the composed fallback\n", what.c_str());
          continue;
        }
        expect_matches(dwc, dw, tol, what + " dw");
        if (with_bias) expect_matches(dbc, db, tol, what + " db (BGRADB)");
      }
    }
  }
}

}  // namespace
}  // namespace kiln
