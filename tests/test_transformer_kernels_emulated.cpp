// The CUDA layer norm and fused classifier kernels run on the CPU under a host emulation of
// blocks, threads, shared memory, __syncthreads and warp shuffles (tests/cuda_emulation.h):
//   layer norm (kernels/cuda/layernorm_kernels.cuh): the forward (plain and with the residual
//     add, with and without weight and bias), and the backward as layernorm.cu chooses it: the
//     one-pass kernel with its register-cached groups (1 to 8 per lane) or, for wide rows, the
//     dx kernel plus the column partials; then the sum of the partial rows;
//   the fused classifier (kernels/cuda/classifier_kernels.cuh): loss and dlogits with padded
//     vocabularies, ignore_index rows, a grad_scale, i32 and i64 targets, and evaluation
//     (no dlogits).
// Each is launched with the grid, block and shared-memory sizes layernorm.cu / classifier.cu
// use (the geometry functions of the headers) and compared with the CPU kernels
// (kernels/cpu/transformer.cpp) through their dispatch stubs. Shapes cover rows of 16-byte
// vectors and scalar rows (cols not a multiple of the vector width), small and wide rows, row
// counts that are not a multiple of the warps per block, and grids that stride (few SMs).
// Outputs and shared memory start as NaN, so an element never written, or read before it is
// written, fails. What the emulation cannot check: warp scheduling, shared-memory and register
// limits, and the device's float functions (expf, logf, rsqrtf).
// tests/test_transformer_ops_cuda.cpp checks the real thing on a GPU.
//
// Tolerances, max|kernel - reference| over max(max|reference|, 1): f32 1e-5 (sums of up to 4100
// f32 terms in another order), f64 1e-12, bf16 1e-2 (bf16 results: 4e-3 relative rounding, plus
// the f32 sums in another order).
#include "tests/cuda_emulation.h"
#include "kernels/cuda/classifier_kernels.cuh"
#include "kernels/cuda/layernorm_kernels.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/dispatch/transformer.h"
#include "core/generator.h"
#include "core/ops.h"

namespace kiln {
namespace {

namespace emu = testing::cuda_emulation;
using namespace layernorm_kernels;
using namespace classifier_kernels;

unsigned u(int64_t n) { return static_cast<unsigned>(n); }

Tensor nan_tensor(const Shape& shape, DType dtype) {
  return Tensor::empty(shape, {dtype}).fill_(std::numeric_limits<double>::quiet_NaN());
}

template <class T>
T* ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

double relative_error(const Tensor& got, const Tensor& want) {
  const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  double scale = 1, err = 0;
  for (double x : w) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = std::abs(g[i] - w[i]);
    err = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(err, d);
  }
  return err / scale;
}

// ------------------------------------------------------------------ layer norm
// layer_norm_cuda, with the emulation for the launches. Returns the vector width.
template <class T>
int emulate_layer_norm(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                       const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  using A = opmath_t<T>;
  const int64_t rows = x.size(0), cols = x.size(1);
  T* yp = ptr<T>(y);
  T* sp = ptr<T>(sum);
  const T* xp = ptr<const T>(x);
  const T* rp = ptr<const T>(residual);
  const int vec = cuda::vec_width<T>(cols, {yp, sp, xp, rp});
  cuda::with_vec_width<T>(vec, [&](auto v) {
    emu::launch({row_blocks(rows)}, kRowThreads, 0, [&] {
      layer_norm_kernel<T, decltype(v)::value>(yp, ptr<A>(mean), ptr<A>(rstd), sp, xp, rp, ptr<const A>(weight),
                                               ptr<const A>(bias), rows, cols, static_cast<A>(eps));
    });
  });
  return vec;
}

struct BackwardPath {
  int vec = 0;
  int groups = 0;  // vector groups per lane on the one-pass path, 0 on the two-kernel path
};

// layer_norm_backward_cuda on a device with `sms` multiprocessors, with the emulation for the
// launches.
template <class T>
BackwardPath emulate_layer_norm_backward(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy,
                                         const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                         const Tensor& weight, int64_t sms) {
  using A = opmath_t<T>;
  const int64_t rows = x.size(0), cols = x.size(1);
  const T* dyp = ptr<const T>(dy);
  const T* xp = ptr<const T>(x);
  const A* mp = ptr<const A>(mean);
  const A* rp = ptr<const A>(rstd);
  T* dxp = ptr<T>(dx);
  const A* wp = ptr<const A>(weight);
  BackwardPath path;
  path.vec = cuda::vec_width<T>(cols, {dxp, dyp, xp});
  const DType acc = accumulate_dtype(x.dtype());
  const int64_t col_blocks = column_blocks(cols);
  Tensor part_w, part_b;
  int64_t chunks = 0;
  bool one_pass = false;
  if (dweight.defined() || dbias.defined()) {
    const int64_t blocks = fused_backward_blocks(rows, sms);
    cuda::with_vec_width<T>(path.vec, [&](auto v) {
      constexpr int kVec = decltype(v)::value;
      one_pass = with_groups<kVec>(cols / kVec, [&](auto groups) {
        path.groups = decltype(groups)::value;
        chunks = blocks;
        part_w = dweight.defined() ? nan_tensor({chunks, cols}, acc) : Tensor();
        part_b = dbias.defined() ? nan_tensor({chunks, cols}, acc) : Tensor();
        emu::launch({u(blocks)}, kFusedThreads, fused_backward_shared_bytes<A>(cols), [&] {
          layer_norm_backward_fused_kernel<T, kVec, decltype(groups)::value>(dxp, ptr<A>(part_w), ptr<A>(part_b), dyp,
                                                                             xp, mp, rp, wp, rows, cols);
        });
      });
    });
  }
  if (!one_pass && dxp) {
    cuda::with_vec_width<T>(path.vec, [&](auto v) {
      emu::launch({row_blocks(rows)}, kRowThreads, 0, [&] {
        layer_norm_dx_kernel<T, decltype(v)::value>(dxp, dyp, xp, mp, rp, wp, rows, cols);
      });
    });
  }
  if (!one_pass && (dweight.defined() || dbias.defined())) {
    chunks = param_chunks(rows, cols, sms);
    const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
    part_w = dweight.defined() ? nan_tensor({chunks, cols}, acc) : Tensor();
    part_b = dbias.defined() ? nan_tensor({chunks, cols}, acc) : Tensor();
    emu::launch({u(col_blocks), u(chunks)}, kColumnThreads, 0, [&] {
      layer_norm_param_partials_kernel<T>(ptr<A>(part_w), ptr<A>(part_b), dyp, xp, mp, rp, rows, cols,
                                          rows_per_chunk);
    });
  }
  for (auto [out, part] : {std::pair{&dweight, &part_w}, std::pair{&dbias, &part_b}}) {
    if (!out->defined()) continue;
    emu::launch({u(col_blocks)}, kColumnThreads, 0, [&] {
      sum_partials_kernel<A>(ptr<A>(*out), ptr<const A>(*part), chunks, cols);
    });
  }
  return path;
}

struct LayerNormCase {
  int64_t rows, cols;
  bool residual, affine;
  int vec;     // the vector width expected (16 bytes or 1)
  int groups;  // the backward path expected: groups per lane, or 0 for the two-kernel path
};

template <class T>
void check_layer_norm(const LayerNormCase& c, uint64_t seed, double tol) {
  const DType dtype = dtype_of<T>::value, acc = accumulate_dtype(dtype);
  const std::string what = std::string(dtype_name(dtype)) + " " + std::to_string(c.rows) + "x" +
                           std::to_string(c.cols) + (c.residual ? " residual" : "") + (c.affine ? " affine" : "");
  Generator gen(seed);
  // A mean far from 0 (as residual streams have), so the two-pass variance matters.
  const Tensor x = (randn({c.rows, c.cols}, {}, &gen) + 3.0).to(dtype);
  const Tensor residual = c.residual ? randn({c.rows, c.cols}, {}, &gen).to(dtype) : Tensor();
  const Tensor weight = c.affine ? randn({c.cols}, {}, &gen).to(acc) : Tensor();
  const Tensor bias = c.affine ? randn({c.cols}, {}, &gen).to(acc) : Tensor();
  const Tensor dy = randn({c.rows, c.cols}, {}, &gen).to(dtype);
  const double eps = 1e-5;

  // Forward.
  Tensor y = nan_tensor({c.rows, c.cols}, dtype), mean = nan_tensor({c.rows}, acc), rstd = nan_tensor({c.rows}, acc);
  Tensor sum = c.residual ? nan_tensor({c.rows, c.cols}, dtype) : Tensor();
  Tensor y_ref = Tensor::empty({c.rows, c.cols}, {dtype}), mean_ref = Tensor::empty({c.rows}, {acc});
  Tensor rstd_ref = Tensor::empty({c.rows}, {acc});
  Tensor sum_ref = c.residual ? Tensor::empty({c.rows, c.cols}, {dtype}) : Tensor();
  layer_norm_stub(kCPU, y_ref, mean_ref, rstd_ref, sum_ref, x, residual, weight, bias, eps);
  EXPECT_EQ(emulate_layer_norm<T>(y, mean, rstd, sum, x, residual, weight, bias, eps), c.vec) << what;
  EXPECT_LE(relative_error(y, y_ref), tol) << what << " y";
  EXPECT_LE(relative_error(mean, mean_ref), tol) << what << " mean";
  EXPECT_LE(relative_error(rstd, rstd_ref), tol) << what << " rstd";
  if (c.residual) EXPECT_LE(relative_error(sum, sum_ref), tol) << what << " sum";

  // Backward, from the reference statistics, on a small device (grids that stride) and an
  // H100's 132 SMs; with every gradient, with dx alone, and with the parameter gradients alone.
  const Tensor& xn = c.residual ? sum_ref : x;  // what was normalised
  for (int64_t sms : {2, 132}) {
    for (int want : {0b111, 0b100, 0b011}) {  // dx, dweight, dbias
      const bool want_dx = want & 4, want_dw = (want & 2) && c.affine, want_db = (want & 1) && c.affine;
      if (!want_dx && !want_dw && !want_db) continue;
      if (!want_dw && !want_db && sms != 2) continue;  // the dx kernel's grid does not depend on SMs
      const std::string how = what + " sms " + std::to_string(sms) + (want_dx ? " dx" : "") +
                              (want_dw ? " dweight" : "") + (want_db ? " dbias" : "");
      Tensor dx = want_dx ? nan_tensor({c.rows, c.cols}, dtype) : Tensor();
      Tensor dw = want_dw ? nan_tensor({c.cols}, acc) : Tensor();
      Tensor db = want_db ? nan_tensor({c.cols}, acc) : Tensor();
      Tensor dx_ref = want_dx ? Tensor::empty({c.rows, c.cols}, {dtype}) : Tensor();
      Tensor dw_ref = want_dw ? Tensor::empty({c.cols}, {acc}) : Tensor();
      Tensor db_ref = want_db ? Tensor::empty({c.cols}, {acc}) : Tensor();
      layer_norm_backward_stub(kCPU, dx_ref, dw_ref, db_ref, dy, xn, mean_ref, rstd_ref, weight);
      const BackwardPath path = emulate_layer_norm_backward<T>(dx, dw, db, dy, xn, mean_ref, rstd_ref, weight, sms);
      EXPECT_EQ(path.vec, c.vec) << how;
      if (want_dw || want_db) EXPECT_EQ(path.groups, c.groups) << how;
      if (want_dx) EXPECT_LE(relative_error(dx, dx_ref), tol) << how << " dx";
      if (want_dw) EXPECT_LE(relative_error(dw, dw_ref), tol) << how << " dweight";
      if (want_db) EXPECT_LE(relative_error(db, db_ref), tol) << how << " dbias";
    }
  }
}

// {rows, cols, residual, affine, vec, groups}: f32 vectors are 4 wide, one pass up to 1024
// columns (8 groups of 32 lanes x 4); scalar rows take one pass up to 256 columns.
TEST(LayerNormEmulated, F32) {
  check_layer_norm<float>({37, 768, true, true, 4, 8}, 1, 1e-5);  // GPT-2's C; rows not a multiple of 4 or 8
  check_layer_norm<float>({13, 17, false, true, 1, 1}, 2, 1e-5);  // scalar, one group
  check_layer_norm<float>({10, 1000, true, false, 4, 8}, 3, 1e-5);
  check_layer_norm<float>({9, 300, false, false, 4, 4}, 4, 1e-5);
  check_layer_norm<float>({5, 64, true, true, 4, 1}, 5, 1e-5);
  check_layer_norm<float>({11, 255, true, true, 1, 8}, 6, 1e-5);  // scalar, 8 groups, a partial last one
  check_layer_norm<float>({7, 259, true, true, 1, 0}, 7, 1e-5);   // scalar, too wide for one pass
  check_layer_norm<float>({6, 1028, false, true, 4, 0}, 8, 1e-5);  // vectors, too wide for one pass
}

// bf16 vectors are 8 wide: one pass up to 1024 columns (4 groups of 32 lanes x 8).
TEST(LayerNormEmulated, Bf16) {
  check_layer_norm<BFloat16>({37, 768, true, true, 8, 4}, 11, 1e-2);
  check_layer_norm<BFloat16>({13, 17, true, true, 1, 1}, 12, 1e-2);
  check_layer_norm<BFloat16>({10, 1000, false, true, 8, 4}, 13, 1e-2);
  check_layer_norm<BFloat16>({9, 300, true, true, 1, 0}, 14, 1e-2);  // 300 % 8 != 0: scalar, two kernels
  check_layer_norm<BFloat16>({6, 1032, true, true, 8, 0}, 15, 1e-2);  // vectors, too wide for one pass
}

// f64 vectors are 2 wide (arithmetic in f64, so the results agree to rounding).
TEST(LayerNormEmulated, F64) {
  check_layer_norm<double>({13, 258, true, true, 2, 8}, 16, 1e-12);
  check_layer_norm<double>({6, 515, false, true, 1, 0}, 17, 1e-12);
}

// ------------------------------------------------------------------ fused classifier
// fused_cross_entropy_cuda, with the emulation for the launch. Returns the vector width.
template <class T, class Idx>
int emulate_fused_cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                const Tensor& grad_scale, int64_t valid, int64_t ignore_index) {
  using A = opmath_t<T>;
  const int64_t rows = logits.size(0), classes = logits.size(1);
  const T* x = ptr<const T>(logits);
  T* d = ptr<T>(dlogits);
  const int vec = cuda::vec_width<T>(classes, {x, d});
  cuda::with_vec_width<T>(vec, [&](auto v) {
    emu::launch({u(classifier_blocks(rows))}, u(classifier_threads(classes)), 0, [&] {
      fused_cross_entropy_kernel<T, Idx, decltype(v)::value>(ptr<A>(losses), d, x, ptr<const Idx>(targets),
                                                             ptr<const A>(grad_scale), rows, classes, valid,
                                                             ignore_index);
    });
  });
  return vec;
}

struct ClassifierCase {
  int64_t rows, classes, valid;
  int vec;
};

template <class T, class Idx>
void check_classifier(const ClassifierCase& c, uint64_t seed, double tol) {
  const DType dtype = dtype_of<T>::value, acc = accumulate_dtype(dtype);
  const int64_t ignore_index = -100;
  const std::string what = std::string(dtype_name(dtype)) + " " + std::to_string(c.rows) + "x" +
                           std::to_string(c.classes) + " valid " + std::to_string(c.valid) + " " +
                           std::string(dtype_name(dtype_of<Idx>::value)) + " targets";
  Generator gen(seed);
  // Spread logits (std 3), so the softmax is far from uniform, and the padded columns larger
  // than any valid one, so a kernel that let them into the max or the sum would show.
  Tensor logits = mul(randn({c.rows, c.classes}, {}, &gen), 3.0);
  {
    float* p = logits.data<float>();
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t k = c.valid; k < c.classes; ++k) p[r * c.classes + k] = 50.0f;
  }
  logits = logits.to(dtype);
  std::vector<int64_t> t = randint(0, c.valid, {c.rows}, {DType::i64}, &gen).to_vector<int64_t>();
  t[0] = ignore_index;
  if (c.rows > 2) t[2] = c.valid - 1;
  if (c.rows > 3) t[3] = 0;
  if (c.rows > 4) t[c.rows - 1] = ignore_index;  // the last row: the block-stride tail
  const Tensor targets = from_vector(t, {c.rows}).to(dtype_of<Idx>::value);
  const Tensor grad_scale = full({1}, 1.0 / 3.0, {acc});

  for (bool train : {true, false}) {
    const std::string how = what + (train ? "" : " eval");
    Tensor losses = nan_tensor({c.rows}, acc);
    Tensor dlogits = train ? nan_tensor({c.rows, c.classes}, dtype) : Tensor();
    Tensor losses_ref = Tensor::empty({c.rows}, {acc});
    Tensor dlogits_ref = train ? Tensor::empty({c.rows, c.classes}, {dtype}) : Tensor();
    fused_cross_entropy_stub(kCPU, losses_ref, dlogits_ref, logits, targets, grad_scale, c.valid, ignore_index);
    EXPECT_EQ((emulate_fused_cross_entropy<T, Idx>(losses, dlogits, logits, targets, grad_scale, c.valid,
                                                   ignore_index)),
              c.vec)
        << how;
    EXPECT_LE(relative_error(losses, losses_ref), tol) << how << " losses";
    if (train) EXPECT_LE(relative_error(dlogits, dlogits_ref), tol) << how << " dlogits";
  }
}

// {rows, classes, valid, vec}. Threads per block: classes / 8 rounded up to warps, 32 to 512.
TEST(FusedClassifierEmulated, F32) {
  check_classifier<float, int32_t>({6, 1024, 1000, 4}, 21, 1e-5);  // GPT-2's 50257 of 50304, scaled down; 4 warps
  check_classifier<float, int64_t>({5, 37, 37, 1}, 22, 1e-5);      // scalar, one warp, no padding
  check_classifier<float, int64_t>({7, 1001, 999, 1}, 23, 1e-5);   // scalar, padded
  check_classifier<float, int32_t>({3, 4100, 4097, 4}, 24, 1e-5);  // 16 warps
}

TEST(FusedClassifierEmulated, F64) {
  check_classifier<double, int64_t>({5, 260, 257, 2}, 25, 1e-12);
}

TEST(FusedClassifierEmulated, Bf16) {
  check_classifier<BFloat16, int32_t>({6, 1024, 1000, 8}, 31, 1e-2);
  check_classifier<BFloat16, int64_t>({5, 1001, 999, 1}, 32, 1e-2);
}

// A target outside [0, valid) that is not ignore_index: a NaN loss and NaN gradient row, the
// other rows unaffected.
TEST(FusedClassifierEmulated, BadTargetGivesNaNRow) {
  const int64_t rows = 3, classes = 64, valid = 60;
  Generator gen(41);
  const Tensor logits = randn({rows, classes}, {}, &gen);
  const Tensor targets = from_vector(std::vector<int64_t>{5, valid, 7}, {rows});
  const Tensor grad_scale = full({1}, 1.0, {});
  Tensor losses = nan_tensor({rows}, DType::f32), dlogits = nan_tensor({rows, classes}, DType::f32);
  emulate_fused_cross_entropy<float, int64_t>(losses, dlogits, logits, targets, grad_scale, valid, -100);
  const std::vector<float> l = losses.to_vector<float>(), d = dlogits.to_vector<float>();
  EXPECT_TRUE(std::isfinite(l[0]) && std::isfinite(l[2]));
  EXPECT_TRUE(std::isnan(l[1]));
  for (int64_t k = 0; k < classes; ++k) {
    EXPECT_TRUE(std::isfinite(d[k]) && std::isfinite(d[2 * classes + k])) << k;
    EXPECT_TRUE(std::isnan(d[classes + k])) << k;
  }
}

}  // namespace
}  // namespace kiln
