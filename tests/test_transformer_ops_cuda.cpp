// CUDA embedding, layer_norm, add_layer_norm and fused_cross_entropy against the CPU kernels,
// forward and backward, in f32 and bf16 (f32 parameters for layer norm, as mixed precision
// keeps them).
//
// Tolerances. The embedding is exact: the forward copies rows, and both backward kernels
// add each token's gradient rows in position order in f32 (f64 has no part here) and round
// once, so the bits must match. The sum of add_layer_norm is exact too (one f32 add, one
// rounding on both devices). Everything else reduces in different orders (the CPU in double,
// the GPU in f32 trees): f32 agrees to ~1e-6 relative (checked at 1e-5, plus an absolute
// slack of 1e-5 of the tensor's largest value for elements that cancel to near zero, as
// dx and the softmax-minus-onehot gradient do); bf16 outputs to one bf16 rounding (2^-8,
// checked at 2e-2 with 2e-3 of the largest value). Losses are f32 on both devices and agree
// to 1e-5 relative in both dtypes (the inputs are the same bf16 values).
//
// Poisoning: before each op the caching allocator's blocks are filled with 0xFF bytes (NaN
// in every float dtype), and the kernel-level tests hand the kernels NaN-filled outputs, so
// an element a kernel forgets to write shows up as a NaN (NaN never passes here).
//
// The shapes cover each kernel path: vector and scalar access (rows that are or are not a
// multiple of 16 bytes), GPT-2's padded vocabulary (50304 columns, 50257 valid), many
// repeats of few tokens (long runs in the sorted embedding backward), i32 and i64 indices.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/embedding.cu,
// kernels/cuda/layernorm.cu, kernels/cuda/classifier.cu, kernels/cuda/online_softmax.cuh,
// kernels/cuda/vector_access.cuh, kernels/cuda/block_reduce.cuh.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/dispatch/transformer.h"
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
  return dtype == DType::bf16 ? Tolerance{.rtol = 2e-2, .atol_scale = 2e-3, .equal_values_pass = false}
                              : Tolerance{.rtol = 1e-5, .atol_scale = 1e-5, .equal_values_pass = false};
}
const Tolerance kExact{.equal_values_pass = true};  // equal values only (within 0)
const Tolerance kLossTolerance{.rtol = 1e-5, .atol = 1e-6, .equal_values_pass = false};

// Poisons the small sizes and the large ones this file's outputs use (the biggest loss buffers).
void poison_device_cache() {
  testing::poison_device_blocks(
      {testing::kSmallDeviceBlocks, {{int64_t{12} << 20, int64_t{24} << 20, int64_t{96} << 20, int64_t{420} << 20}, 2}});
}

Tensor random_indices(int64_t n, int64_t vocab, DType dtype, uint32_t seed, int64_t distinct = 0) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, (distinct > 0 ? distinct : vocab) - 1);
  std::vector<int64_t> v(n);
  for (int64_t& e : v) e = dist(rng) * (distinct > 0 ? vocab / distinct : 1);
  return from_vector(v, {n}).to(dtype);
}

std::string label(const char* op, DType dtype, const Shape& shape) {
  return std::string(op) + " " + std::string(dtype_name(dtype)) + " " + shape_str(shape);
}

// ================================================================ embedding
struct EmbeddingCase {
  int64_t vocab, cols, n, distinct;  // distinct > 0: only that many tokens (long runs)
  DType index_dtype;
};

TEST(EmbeddingCuda, ForwardAndBackwardMatchCpuBitForBit) {
  KILN_SKIP_WITHOUT_CUDA();
  const std::vector<EmbeddingCase> cases = {
      {50257, 768, 1024, 0, DType::i32},  // GPT-2 token table, vector path
      {1024, 768, 1024, 0, DType::i64},   // position table: every row once
      {97, 13, 3000, 5, DType::i64},      // scalar path, long runs
      {8, 64, 20000, 3, DType::i32},      // runs of thousands
  };
  uint32_t seed = 1;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const EmbeddingCase& c : cases) {
      const std::string what = label("embedding", dtype, {c.vocab, c.cols}) + " n=" + std::to_string(c.n);
      const Tensor w0 = random_cpu({c.vocab, c.cols}, -1, 1, dtype, ++seed);
      const Tensor idx = random_indices(c.n, c.vocab, c.index_dtype, ++seed, c.distinct);
      const Tensor g = random_cpu({c.n, c.cols}, -1, 1, dtype, ++seed);
      Tensor w = w0.detach().requires_grad_(true);
      Tensor wc = w0.to(kCuda).detach().requires_grad_(true);
      poison_device_cache();
      const Tensor y = embedding(w, idx), yc = embedding(wc, idx.to(kCuda));
      expect_matches(yc, y, kExact, what);
      y.backward(g);
      poison_device_cache();
      yc.backward(g.to(kCuda));
      expect_matches(wc.grad(), w.grad(), kExact, what + " backward");
      // Again: the same bits.
      const Tensor first = wc.grad().cpu();
      wc.mutable_grad() = Tensor();
      embedding(wc, idx.to(kCuda)).backward(g.to(kCuda));
      EXPECT_EQ(wc.grad().cpu().to_vector<double>(), first.to_vector<double>()) << what << " rerun";
    }
  }
}

TEST(EmbeddingCuda, KernelWritesEveryRowAndBadIndexGivesNan) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor go = random_cpu({6, 8}, -1, 1, DType::f32, 7).to(kCuda);
  const Tensor idx = from_vector(std::vector<int64_t>{3, 1, 3, 3, 0, 1}, {6}).to(kCuda);
  Tensor gw = nan_like(zeros({5, 8}, {.device = kCuda}));  // rows 2 and 4 are unused
  embedding_backward_stub(kCuda, gw, go, idx);
  Tensor gw_cpu = empty({5, 8});
  embedding_backward_stub(kCPU, gw_cpu, go.cpu(), idx.cpu());
  expect_matches(gw, gw_cpu, kExact, "embedding backward kernel over NaN");

  const Tensor table = random_cpu({4, 8}, -1, 1, DType::f32, 8).to(kCuda);
  const Tensor bad = from_vector(std::vector<int64_t>{1, 4, -1}, {3}).to(kCuda);
  const std::vector<double> y = embedding(table, bad).cpu().to_vector<double>();
  for (int64_t k = 0; k < 8; ++k) {
    EXPECT_FALSE(std::isnan(y[k])) << k;
    EXPECT_TRUE(std::isnan(y[8 + k]) && std::isnan(y[16 + k])) << k;
  }
}

// ================================================================ layer norm
struct LayerNormCase {
  Shape shape;
  bool affine;
  const char* path;
};

std::vector<LayerNormCase> layer_norm_cases() {
  return {
      {{64, 768}, true, "GPT-2 width, vector"},
      {{4, 3, 1600}, true, "3-D, vector, 1600"},
      {{33, 100}, true, "scalar for bf16 (100 is not a multiple of 8)"},
      {{17, 37}, false, "scalar, no weight or bias"},
      {{2000, 64}, true, "many rows (several row chunks for the parameter sums)"},
  };
}

TEST(LayerNormCuda, ForwardAndBackwardMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const LayerNormCase& c : layer_norm_cases()) {
      const std::string what = label("layer_norm", dtype, c.shape) + " (" + c.path + ")";
      const int64_t cols = c.shape.back();
      const Tensor x0 = random_cpu(c.shape, -3, 5, dtype, ++seed);
      const Tensor g = random_cpu(c.shape, -1, 1, dtype, ++seed);
      Tensor w, b, wc, bc;
      if (c.affine) {
        const Tensor w0 = random_cpu({cols}, 0.5, 1.5, DType::f32, ++seed);
        const Tensor b0 = random_cpu({cols}, -1, 1, DType::f32, ++seed);
        w = w0.detach().requires_grad_(true);
        b = b0.detach().requires_grad_(true);
        wc = w0.to(kCuda).detach().requires_grad_(true);
        bc = b0.to(kCuda).detach().requires_grad_(true);
      }
      Tensor x = x0.detach().requires_grad_(true);
      Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
      poison_device_cache();
      const Tensor y = layer_norm(x, w, b), yc = layer_norm(xc, wc, bc);
      expect_matches(yc, y, tol, what);
      y.backward(g);
      poison_device_cache();
      yc.backward(g.to(kCuda));
      expect_matches(xc.grad(), x.grad(), tol, what + " dx");
      if (c.affine) {
        // f32 sums over rows on both devices: f32 accuracy even for bf16 activations.
        const Tolerance sums{.rtol = 1e-4, .atol_scale = 1e-4, .equal_values_pass = false};
        expect_matches(wc.grad(), w.grad(), sums, what + " dweight");
        expect_matches(bc.grad(), b.grad(), sums, what + " dbias");
      }
    }
  }
}

TEST(LayerNormCuda, BackwardKernelIsDeterministicAndFillsOutputs) {
  KILN_SKIP_WITHOUT_CUDA();
  const int64_t rows = 4096, cols = 768;
  const Tensor x = random_cpu({rows, cols}, -2, 2, DType::bf16, 200).to(kCuda);
  const Tensor dy = random_cpu({rows, cols}, -1, 1, DType::bf16, 201).to(kCuda);
  const Tensor w = random_cpu({cols}, 0.5, 1.5, DType::f32, 202).to(kCuda);
  Tensor y = nan_like(x), mean = nan_like(zeros({rows}, {.device = kCuda})), rstd = nan_like(mean);
  Tensor no_sum;
  layer_norm_stub(kCuda, y, mean, rstd, no_sum, x, Tensor(), w, Tensor(), 1e-5);
  std::vector<double> first;
  for (int run = 0; run < 3; ++run) {
    Tensor dx = nan_like(x), dw = nan_like(w), db = nan_like(w);
    layer_norm_backward_stub(kCuda, dx, dw, db, dy, x, mean, rstd, w);
    std::vector<double> all = dx.cpu().to_vector<double>();
    for (const Tensor& t : {dw, db, y, mean, rstd})
      for (double v : t.cpu().to_vector<double>()) all.push_back(v);
    for (double v : all) ASSERT_FALSE(std::isnan(v)) << "an output element was never written";
    if (run == 0) first = all;
    else EXPECT_EQ(all, first) << "run " << run;
  }
}

TEST(AddLayerNormCuda, ForwardAndBackwardMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 300;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const Shape& shape : {Shape{8, 64, 768}, Shape{9, 100}}) {
      const std::string what = label("add_layer_norm", dtype, shape);
      const int64_t cols = shape.back();
      const Tensor x0 = random_cpu(shape, -2, 2, dtype, ++seed), r0 = random_cpu(shape, -2, 2, dtype, ++seed);
      const Tensor w0 = random_cpu({cols}, 0.5, 1.5, DType::f32, ++seed);
      const Tensor b0 = random_cpu({cols}, -1, 1, DType::f32, ++seed);
      const Tensor gs = random_cpu(shape, -1, 1, dtype, ++seed), gn = random_cpu(shape, -1, 1, dtype, ++seed);
      std::vector<Tensor> cpu = {x0, r0, w0, b0}, gpu;
      for (Tensor& t : cpu) {
        gpu.push_back(t.to(kCuda).detach().requires_grad_(true));
        t = t.detach().requires_grad_(true);
      }
      poison_device_cache();
      const auto [s, n] = add_layer_norm(cpu[0], cpu[1], cpu[2], cpu[3]);
      const auto [sc, nc] = add_layer_norm(gpu[0], gpu[1], gpu[2], gpu[3]);
      expect_matches(sc, s, kExact, what + " sum");
      expect_matches(nc, n, tol, what + " normed");
      // Both outputs carry gradient, as in a pre-LN block.
      run_backward({s, n}, {gs, gn}, false);
      poison_device_cache();
      run_backward({sc, nc}, {gs.to(kCuda), gn.to(kCuda)}, false);
      const Tolerance sums{.rtol = 1e-4, .atol_scale = 1e-4, .equal_values_pass = false};
      expect_matches(gpu[0].grad(), cpu[0].grad(), tol, what + " dx");
      expect_matches(gpu[1].grad(), cpu[1].grad(), tol, what + " dresidual");
      expect_matches(gpu[2].grad(), cpu[2].grad(), sums, what + " dweight");
      expect_matches(gpu[3].grad(), cpu[3].grad(), sums, what + " dbias");
    }
  }
}

// ================================================================ fused cross-entropy
struct ClassifierCase {
  int64_t rows, classes, valid;
  const char* path;
};

Tensor classifier_targets(int64_t rows, int64_t valid, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, valid - 1);
  std::vector<int64_t> t(rows);
  for (int64_t i = 0; i < rows; ++i) t[i] = i % 5 == 3 ? -100 : dist(rng);
  if (rows > 1) t[1] = valid - 1;  // the last valid class, next to the padding
  return from_vector(t, {rows});
}

TEST(FusedCrossEntropyCuda, LossAndGradientMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const std::vector<ClassifierCase> cases = {
      {32, 50304, 50257, "GPT-2 padded vocabulary, vector"},
      {37, 1000, 1000, "no padding, vector"},
      {16, 77, 70, "scalar, padded"},
  };
  uint64_t seed = 400;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tolerance tol = tolerance(dtype);
    for (const ClassifierCase& c : cases) {
      const std::string what = label("fused_cross_entropy", dtype, {c.rows, c.classes}) + " (" + c.path + ")";
      const Tensor x0 = random_cpu({c.rows, c.classes}, -8, 8, dtype, ++seed);
      const Tensor t = classifier_targets(c.rows, c.valid, static_cast<uint32_t>(++seed));
      Tensor x = x0.detach().requires_grad_(true);
      Tensor xc = x0.to(kCuda).detach().requires_grad_(true);
      poison_device_cache();
      const Tensor loss = fused_cross_entropy(x, t, c.valid), lossc = fused_cross_entropy(xc, t.to(kCuda), c.valid);
      expect_matches(lossc, loss, kLossTolerance, what + " loss");
      {
        NoGradGuard no_grad;  // evaluation: the kernel skips the gradient pass, same loss
        expect_matches(fused_cross_entropy(xc, t.to(kCuda), c.valid), lossc.detach(), kExact, what + " eval loss");
      }
      loss.backward(full({}, 2.5));
      poison_device_cache();
      lossc.backward(full({}, 2.5, {.device = kCuda}));
      expect_matches(xc.grad(), x.grad(), tol, what + " dlogits");
    }
  }
}

TEST(FusedCrossEntropyCuda, KernelFillsPaddingAndBadTargetGivesNan) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = random_cpu({3, 24}, -2, 2, DType::f32, 500).to(kCuda);
  const Tensor t = from_vector(std::vector<int64_t>{5, -100, 20}, {3}).to(kCuda);  // 20 >= valid 20
  const Tensor scale = full({1}, 0.5, {.device = kCuda});
  Tensor losses = nan_like(zeros({3}, {.device = kCuda})), d = nan_like(x);
  fused_cross_entropy_stub(kCuda, losses, d, x, t, scale, 20, -100);
  const std::vector<double> l = losses.cpu().to_vector<double>(), dv = d.cpu().to_vector<double>();
  EXPECT_TRUE(std::isfinite(l[0]));
  EXPECT_EQ(l[1], 0.0);
  EXPECT_TRUE(std::isnan(l[2]));
  for (int64_t c = 0; c < 24; ++c) {
    EXPECT_TRUE(std::isfinite(dv[c])) << c;
    if (c >= 20) EXPECT_EQ(dv[c], 0.0) << "padded column " << c;
    EXPECT_EQ(dv[24 + c], 0.0) << "ignored row, column " << c;
    EXPECT_TRUE(std::isnan(dv[48 + c])) << "bad target row, column " << c;
  }
}

}  // namespace
}  // namespace kiln
