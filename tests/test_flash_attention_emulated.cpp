// The CUDA flash attention kernels (kernels/cuda/flash_attention_kernels.cuh) run on the CPU
// under a host emulation of blocks, threads, shared memory and __syncthreads
// (tests/cuda_emulation.h), against the naive backend in f64: checks their tiling, causal
// masking, indexing, tails (lengths not a multiple of the 64-row blocks or 32-key tiles) and
// barriers on any machine. Outputs and shared memory start as NaN, so an element never written
// or a value read before it is written fails. What the emulation cannot check: warp scheduling,
// shared-memory limits, launch configuration, and the device's float functions (expf, logf).
// tests/test_attention_cuda.cpp checks the real thing on a GPU.
//
// Tolerances, max|kernel - reference| over max(max|reference|, 1): f32 1e-5 (the kernels sum in
// f32 over up to 150 keys), bf16 1e-2 (the inputs are bf16 and so are the results: 4e-3
// relative rounding, plus f32 sums).
#include "tests/cuda_emulation.h"
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
