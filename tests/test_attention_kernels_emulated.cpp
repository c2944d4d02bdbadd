// The CUDA attention kernels run on the CPU under a host emulation of blocks, threads, shared
// memory, __syncthreads and warp shuffles (tests/cuda_emulation.h):
//   flash (kernels/cuda/flash_attention_kernels.cuh): forward, delta, dK/dV and dQ as
//     flash_attention.cu launches them, against the naive backend in f64: their tiling, causal
//     masking, indexing, tails (lengths not a multiple of the 64-row blocks or 32-key tiles) and
//     barriers;
//   the batched backend's fused softmax (kernels/cuda/attention_softmax_kernels.cuh), forward
//     and backward, against the formulas in double, with fewer warps than rows.
// Outputs and shared memory start as NaN, so an element never written or a value read before it
// is written fails. What the emulation cannot check: warp scheduling, shared-memory limits,
// launch configuration, and the device's float functions (expf, logf).
// tests/test_attention_cuda.cpp checks the real thing on a GPU.
//
// Tolerances, max|kernel - reference| over max(max|reference|, 1): f32 1e-5 (the kernels sum in
// f32 over up to 150 keys), f64 1e-12, bf16 1e-2 (the inputs are bf16 and so are the results:
// 4e-3 relative rounding, plus f32 sums).
#include "tests/cuda_emulation.h"
#include "kernels/cuda/attention_softmax_kernels.cuh"
#include "kernels/cuda/flash_attention_kernels.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"

namespace kiln {
namespace {

namespace emu = testing::cuda_emulation;
using flash_kernels::kRows;

unsigned blocks(int n, int per) { return static_cast<unsigned>((n + per - 1) / per); }

struct Case {
  int BH, Tq, Tk;
  bool causal;
};

template <class T>
std::vector<T> nan_buffer(size_t n) {
  return std::vector<T>(n, T(std::numeric_limits<float>::quiet_NaN()));
}

template <class T>
double relative_error(const std::vector<T>& got, const Tensor& want) {
  const std::vector<double> w = want.to_vector<double>();
  double scale = 1, err = 0;
  for (double x : w) scale = std::max(scale, std::abs(x));
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = std::abs(static_cast<double>(static_cast<float>(got[i])) - w[i]);
    err = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(err, d);
  }
  return err / scale;
}

// Runs the forward, delta, dK/dV and dQ kernels as flash_attention.cu launches them.
template <class T, int D>
void check(const Case& c, uint64_t seed, double tol) {
  const DType dtype = dtype_of<T>::value;
  Generator gen(seed);
  auto draw = [&](int T_) { return randn({1, c.BH, T_, D}, {}, &gen).to(dtype); };
  const Tensor q = draw(c.Tq), k = draw(c.Tk), v = draw(c.Tk), g = draw(c.Tq);
  Tensor q64 = q.to(DType::f64).requires_grad_(), k64 = k.to(DType::f64).requires_grad_();
  Tensor v64 = v.to(DType::f64).requires_grad_();
  const Tensor ref = scaled_dot_product_attention(q64, k64, v64, c.causal);
  ref.backward(g.to(DType::f64));

  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const T *qp = q.data<T>(), *kp = k.data<T>(), *vp = v.data<T>(), *gp = g.data<T>();
  const size_t nq = static_cast<size_t>(c.BH) * c.Tq, nk = static_cast<size_t>(c.BH) * c.Tk;
  std::vector<T> out = nan_buffer<T>(nq * D), dq = nan_buffer<T>(nq * D);
  std::vector<T> dk = nan_buffer<T>(nk * D), dv = nan_buffer<T>(nk * D);
  std::vector<float> lse = nan_buffer<float>(nq), delta = nan_buffer<float>(nq);
  const emu::Dim3 q_grid{blocks(c.Tq, kRows), static_cast<unsigned>(c.BH)};
  const emu::Dim3 k_grid{blocks(c.Tk, kRows), static_cast<unsigned>(c.BH)};

  emu::launch(q_grid, kRows, flash_kernels::forward_smem_bytes<D>(), [&] {
    flash_kernels::flash_forward_kernel<T, D>(out.data(), lse.data(), qp, kp, vp, c.Tq, c.Tk, c.causal, scale);
  });
  emu::launch({2, 1}, 32, 0, [&] {
    flash_kernels::flash_delta_kernel<T>(delta.data(), gp, out.data(), static_cast<int64_t>(nq), D);
  });
  const flash_kernels::BackwardPtrs a{lse.data(), delta.data(), c.Tq, c.Tk, c.causal, scale};
  emu::launch(k_grid, kRows, flash_kernels::dkdv_smem_bytes<D>(), [&] {
    flash_kernels::flash_backward_dkdv_kernel<T, D>(dk.data(), dv.data(), qp, kp, vp, gp, a);
  });
  emu::launch(q_grid, kRows, flash_kernels::dq_smem_bytes<D>(), [&] {
    flash_kernels::flash_backward_dq_kernel<T, D>(dq.data(), qp, kp, vp, gp, a);
  });

  const std::string what = std::string(dtype_name(dtype)) + " D" + std::to_string(D) + " BH" +
                           std::to_string(c.BH) + " Tq" + std::to_string(c.Tq) + " Tk" +
                           std::to_string(c.Tk) + (c.causal ? " causal" : "");
  EXPECT_LE(relative_error(out, ref.detach()), tol) << what << " out";
  EXPECT_LE(relative_error(dq, q64.grad()), tol) << what << " dq";
  EXPECT_LE(relative_error(dk, k64.grad()), tol) << what << " dk";
  EXPECT_LE(relative_error(dv, v64.grad()), tol) << what << " dv";
  // lse is the log-sum-exp of each row's scaled scores: exp(s - lse) sums to 1 (checked via
  // the output above); here just that every row got a finite one.
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_TRUE(std::isfinite(lse[i])) << what << " lse " << i;
}

// The batched backend's softmax of [BH, Tq, Tk] scores, scale 1/8, then its backward from the
// probabilities it wrote.
template <class T>
void check_softmax(int BH, int Tq, int Tk, bool causal, unsigned blocks_in_grid, uint64_t seed, double tol) {
  using A = opmath_t<T>;
  using attention_kernels::kWarp;
  using attention_kernels::kWarpsPerBlock;
  const DType dtype = dtype_of<T>::value;
  const double scale = 0.125;
  Generator gen(seed);
  const Tensor scores = mul(randn({BH, Tq, Tk}, {}, &gen), 20.0).to(dtype);
  const Tensor grad = randn({BH, Tq, Tk}, {}, &gen).to(dtype);
  const int64_t rows = static_cast<int64_t>(BH) * Tq;
  const size_t n = static_cast<size_t>(rows) * Tk;
  std::vector<T> probs = nan_buffer<T>(n), grad_scores = nan_buffer<T>(n);
  const unsigned threads = kWarpsPerBlock * kWarp;
  emu::launch({blocks_in_grid, 1}, threads, 0, [&] {
    attention_kernels::attention_softmax_kernel<T>(probs.data(), scores.data<T>(), rows, Tq, Tk, causal,
                                                   static_cast<A>(scale));
  });
  emu::launch({blocks_in_grid, 1}, threads, 0, [&] {
    attention_kernels::attention_softmax_backward_kernel<T>(grad_scores.data(), grad.data<T>(), probs.data(),
                                                            rows, Tk, static_cast<A>(scale));
  });
  const std::vector<double> x = scores.to_vector<double>(), g = grad.to_vector<double>();
  const std::string what = std::string(dtype_name(dtype)) + " BH" + std::to_string(BH) + " Tq" +
                           std::to_string(Tq) + " Tk" + std::to_string(Tk) + (causal ? " causal" : "");
  double p_err = 0, g_err = 0, g_scale = 1;
  for (int64_t r = 0; r < rows; ++r) {
    const int visible = causal ? static_cast<int>(r % Tq) + 1 : Tk;
    const double* xr = x.data() + r * Tk;
    double m = -std::numeric_limits<double>::infinity(), z = 0, dot = 0;
    for (int c = 0; c < visible; ++c) m = std::max(m, xr[c] * scale);
    for (int c = 0; c < visible; ++c) z += std::exp(xr[c] * scale - m);
    for (int c = 0; c < Tk; ++c) {
      const double p = static_cast<double>(probs[r * Tk + c]);
      if (c >= visible) {
        ASSERT_EQ(p, 0.0) << what << " masked row " << r << " col " << c;
        continue;
      }
      const double d = std::abs(p - std::exp(xr[c] * scale - m) / z);
      p_err = std::isnan(d) ? INFINITY : std::max(p_err, d);
      dot += g[r * Tk + c] * p;
    }
    for (int c = 0; c < Tk; ++c) {  // from the probabilities as stored, like autograd
      const double p = static_cast<double>(probs[r * Tk + c]);
      const double want = scale * p * (g[r * Tk + c] - dot);
      g_scale = std::max(g_scale, std::abs(want));
      const double d = std::abs(static_cast<double>(grad_scores[r * Tk + c]) - want);
      g_err = std::isnan(d) ? INFINITY : std::max(g_err, d);
    }
  }
  EXPECT_LE(p_err, tol) << what << " probs";
  EXPECT_LE(g_err / g_scale, tol) << what << " grad_scores";
}

TEST(AttentionSoftmaxEmulated, ForwardAndBackward) {
  check_softmax<float>(3, 70, 70, true, 2, 11, 1e-6);  // 210 rows over 8 warps
  check_softmax<float>(2, 5, 100, false, 1, 12, 1e-6);
  check_softmax<float>(1, 3, 1, false, 1, 13, 1e-6);
  check_softmax<double>(2, 33, 33, true, 3, 14, 1e-12);
  check_softmax<BFloat16>(2, 4, 40, false, 1, 15, 1e-2);
}

TEST(FlashAttentionEmulated, F32) {
  check<float, 64>({2, 1, 1, true}, 1, 1e-5);
  check<float, 64>({2, 17, 17, true}, 2, 1e-5);
  check<float, 32>({2, 130, 130, true}, 3, 1e-5);     // three query blocks, the last of 2 rows
  check<float, 64>({1, 100, 33, false}, 4, 1e-5);     // Tk a tile and one key
  check<float, 16>({1, 33, 100, false}, 5, 1e-5);
  check<float, 128>({1, 70, 70, true}, 6, 1e-5);
}

TEST(FlashAttentionEmulated, Bf16) {
  check<BFloat16, 64>({2, 150, 150, true}, 7, 1e-2);
  check<BFloat16, 32>({1, 65, 129, false}, 8, 1e-2);
}

}  // namespace
}  // namespace kiln
