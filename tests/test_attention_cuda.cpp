// scaled_dot_product_attention on CUDA: the naive, flash and batched backends, forward and
// backward, in f32 and bf16, against the CPU naive backend in f64 on the same (dtype-rounded)
// inputs, for T in {1, 17, 64, 256, 1024} (one row, odd lengths across the 64-row and 32-key
// tiles, GPT-2's 1024) and head dims 32 and 64, causal and not; a non-causal Tq != Tk case; head
// dims 16 and 128; outputs written into memory first filled with NaN bytes (so an element a
// kernel forgets to write fails); bit-identical flash gradients from run to run (no atomics);
// autocast; errors for what flash does not support.
//
// Tolerances, as max|gpu - reference| <= tol * max(max|reference|, 1) over a whole tensor:
//   f32   2e-5 for the output, 1e-4 for gradients: f32 sums over up to 1024 keys (or queries)
//         in a different order than the f64 reference, exp in f32.
//   bf16  2e-2 for the output, 5e-2 for gradients, or twice the error of the CPU naive
//         backend run in bf16 on the same inputs, whichever is larger: bf16 rounds the inputs'
//         products' results (8 mantissa bits, 4e-3 relative); naive and batched also round
//         the scores and probabilities to bf16, and dS = P (dP - delta) cancels.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/attention.cu,
// kernels/cuda/attention_softmax_kernels.cuh, kernels/cuda/flash_attention.cu,
// kernels/cuda/flash_attention_kernels.cuh, kernels/cuda/matmul.cu (the batched backend).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "tests/attention_testing.h"
#include "tests/cuda_compare.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::backend_name;
using testing::kAttentionBackends;
using testing::kCuda;
using testing::max_abs;
using testing::randn_cpu;

struct Case {
  int64_t B, H, Tq, Tk, D;
  bool causal;
  std::string label() const {
    return "B" + std::to_string(B) + " H" + std::to_string(H) + " Tq" + std::to_string(Tq) + " Tk" +
           std::to_string(Tk) + " D" + std::to_string(D) + (causal ? " causal" : "");
  }
};

// Output and input gradients of one run: {out, dq, dk, dv}.
using Results = std::vector<Tensor>;

Results run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& g, bool causal,
            AttentionBackend b) {
  Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
  const Tensor out = scaled_dot_product_attention(q, k, v, causal, b);
  out.backward(g);
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

struct Inputs {
  Tensor q, k, v, g;  // CPU, in the dtype under test
};

Inputs make_inputs(const Case& c, DType dtype, uint64_t seed) {
  return {randn_cpu({c.B, c.H, c.Tq, c.D}, seed, dtype), randn_cpu({c.B, c.H, c.Tk, c.D}, seed + 1, dtype),
          randn_cpu({c.B, c.H, c.Tk, c.D}, seed + 2, dtype), randn_cpu({c.B, c.H, c.Tq, c.D}, seed + 3, dtype)};
}

Results on_cuda(const Inputs& in, const Case& c, AttentionBackend b) {
  const int64_t es = static_cast<int64_t>(in.q.element_size());
  const int64_t q_bytes = c.B * c.H * c.Tq * c.D * es, kv_bytes = c.B * c.H * c.Tk * c.D * es;
  testing::poison_device_blocks({{{q_bytes, kv_bytes, c.B * c.H * c.Tq * 4}, 3}});
  return run(in.q.to(kCuda), in.k.to(kCuda), in.v.to(kCuda), in.g.to(kCuda), c.causal, b);
}

void check_case(const Case& c, uint64_t seed) {
  const char* names[] = {"out", "dq", "dk", "dv"};
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Inputs in = make_inputs(c, dtype, seed);
    const Results ref = run(in.q.to(DType::f64), in.k.to(DType::f64), in.v.to(DType::f64),
                            in.g.to(DType::f64), c.causal, AttentionBackend::naive);
    Results cpu_low;  // the CPU naive backend in bf16: what bf16 rounding alone costs
    if (dtype == DType::bf16) cpu_low = run(in.q, in.k, in.v, in.g, c.causal, AttentionBackend::naive);
    for (AttentionBackend b : kAttentionBackends) {
      const Results got = on_cuda(in, c, b);
      for (int i = 0; i < 4; ++i) {
        const std::string what = std::string(backend_name(b)) + " " + std::string(dtype_name(dtype)) + " " +
                                 c.label() + " " + names[i];
        ASSERT_TRUE(got[i].defined() && got[i].is_cuda()) << what;
        ASSERT_EQ(got[i].dtype(), dtype) << what;
        ASSERT_EQ(got[i].shape(), ref[i].shape()) << what;
        const double scale = std::max(max_abs(ref[i]), 1.0);  // T = 1: dq and dk are exactly 0
        double tol = dtype == DType::f32 ? (i == 0 ? 2e-5 : 1e-4) : (i == 0 ? 2e-2 : 5e-2);
        tol *= scale;
        if (dtype == DType::bf16) tol = std::max(tol, 2 * max_abs_diff(cpu_low[i], ref[i]));
        const double err = max_abs_diff(got[i].cpu(), ref[i]);
        EXPECT_LE(err, tol) << what << " (max |reference| " << scale << ")";  // NaN fails too
      }
    }
  }
}

TEST(AttentionCuda, BackendsMatchCpuAcrossLengthsAndHeadDims) {
  KILN_SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (int64_t T : {1, 17, 64, 256, 1024})
    for (int64_t D : {32, 64})
      for (bool causal : {true, false}) check_case({2, 2, T, T, D, causal}, seed += 10);
}

TEST(AttentionCuda, OtherShapes) {
  KILN_SKIP_WITHOUT_CUDA();
  check_case({2, 3, 33, 100, 64, false}, 500);  // Tq != Tk
  check_case({1, 2, 150, 7, 32, false}, 510);   // fewer keys than a tile
  check_case({1, 2, 200, 200, 128, true}, 520);
  check_case({3, 1, 97, 97, 16, true}, 530);
  check_case({1, 12, 128, 128, 64, true}, 540);  // GPT-2's heads
}

TEST(AttentionCuda, FlashGradientsAreDeterministic) {
  KILN_SKIP_WITHOUT_CUDA();
  const Case c{2, 4, 300, 300, 64, true};
  const Inputs in = make_inputs(c, DType::bf16, 900);
  const Results a = on_cuda(in, c, AttentionBackend::flash), b = on_cuda(in, c, AttentionBackend::flash);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(max_abs_diff(a[i].cpu(), b[i].cpu()), 0.0) << i;
}

TEST(AttentionCuda, Autocast) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor q = randn_cpu({1, 2, 40, 64}, 950, DType::f32).to(kCuda);
  const Tensor want = scaled_dot_product_attention(q.cpu(), q.cpu(), q.cpu(), true);
  for (AttentionBackend b : kAttentionBackends) {
    const Tensor x = q.detach().requires_grad_();
    Tensor out;
    {
      AutocastGuard autocast(DType::bf16);
      out = scaled_dot_product_attention(x, x, x, true, b);
    }
    EXPECT_EQ(out.dtype(), DType::bf16) << backend_name(b);
    EXPECT_LE(max_abs_diff(out.cpu(), want), 3e-2 * max_abs(want)) << backend_name(b);
    sum(out.to(DType::f32)).backward();
    ASSERT_TRUE(x.grad().defined()) << backend_name(b);
    EXPECT_EQ(x.grad().dtype(), DType::f32) << backend_name(b);
  }
}

TEST(AttentionCuda, FlashLimits) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor odd = zeros({1, 1, 4, 48}, {.device = kCuda});
  testing::expect_error([&] { scaled_dot_product_attention(odd, odd, odd, false, AttentionBackend::flash); },
                        {"head dims", "48"});
  const Tensor f64 = zeros({1, 1, 4, 64}, {.dtype = DType::f64, .device = kCuda});
  testing::expect_error([&] { scaled_dot_product_attention(f64, f64, f64, false, AttentionBackend::flash); },
                        {"f64"});
  // The other backends take both.
  EXPECT_EQ(scaled_dot_product_attention(odd, odd, odd, true, AttentionBackend::batched).shape(), odd.shape());
  EXPECT_EQ(scaled_dot_product_attention(f64, f64, f64, true, AttentionBackend::batched).dtype(), DType::f64);
}

}  // namespace
}  // namespace kiln
