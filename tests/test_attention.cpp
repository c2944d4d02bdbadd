// scaled_dot_product_attention on the CPU: the naive backend against softmax(q k^T / sqrt(D)) v
// written out in this file and against PyTorch 1.13 (softmax and matmuls in torch, since 1.13
// has no F.scaled_dot_product_attention); gradients of naive and flash by finite differences in
// f64; flash (the tiled online-softmax algorithm in plain C++) against naive, forward and
// backward, at lengths that are and are not multiples of its tiles; batched (naive on the CPU);
// autocast; argument errors.
//
// Tolerances: f64 backends agree to 1e-12 (different summation orders only); f32 to 1e-5 of the
// largest reference value (exp and sums in a different order over up to 300 keys).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "tests/attention_testing.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"
#include "tests/npy.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

using testing::backend_name;
using testing::expect_error;
using testing::gradcheck;
using testing::kAttentionBackends;
using testing::rand_input;

// Reference attention in double, straight from the definition, for [B, H, Tq, D] values.
std::vector<double> ref_attention(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int64_t BH, int64_t Tq, int64_t Tk,
                                  int64_t D, bool causal) {
  std::vector<double> out(static_cast<size_t>(BH * Tq * D), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t h = 0; h < BH; ++h) {
    for (int64_t i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk, -std::numeric_limits<double>::infinity());
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < Tk; ++j) {
        if (causal && j > i) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += q[(h * Tq + i) * D + d] * k[(h * Tk + j) * D + d];
        s[j] = dot * scale;
        m = std::max(m, s[j]);
      }
      double z = 0;
      for (int64_t j = 0; j < Tk; ++j) z += std::exp(s[j] - m);
      for (int64_t j = 0; j < Tk; ++j) {
        const double p = std::exp(s[j] - m) / z;
        for (int64_t d = 0; d < D; ++d) out[(h * Tq + i) * D + d] += p * v[(h * Tk + j) * D + d];
      }
    }
  }
  return out;
}

double max_abs(const Tensor& t) { return max_abs_diff(t, zeros_like(t)); }

Tensor sdpa(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, AttentionBackend b) {
  return scaled_dot_product_attention(q, k, v, causal, b);
}

struct Case {
  int64_t B, H, Tq, Tk, D;
  bool causal;
};

std::string label(const Case& c) {
  return "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " Tq" + std::to_string(c.Tq) + " Tk" +
         std::to_string(c.Tk) + " D" + std::to_string(c.D) + (c.causal ? " causal" : "");
}

// ---------------------------------------------------------------- forward values
TEST(Attention, EveryBackendMatchesTheDefinition) {
  const std::vector<Case> cases = {
      {2, 3, 5, 5, 4, true}, {2, 3, 5, 5, 4, false}, {1, 2, 3, 7, 8, false}, {1, 1, 9, 2, 3, false},
      {1, 1, 1, 1, 16, true}, {2, 2, 70, 70, 32, true}, {1, 2, 67, 130, 64, false},
  };
  uint64_t seed = 1;
  for (const Case& c : cases) {
    const Tensor q = rand_input({c.B, c.H, c.Tq, c.D}, -2, 2, ++seed).detach();
    const Tensor k = rand_input({c.B, c.H, c.Tk, c.D}, -2, 2, ++seed).detach();
    const Tensor v = rand_input({c.B, c.H, c.Tk, c.D}, -1, 1, ++seed).detach();
    const std::vector<double> want = ref_attention(q.to_vector<double>(), k.to_vector<double>(),
                                                   v.to_vector<double>(), c.B * c.H, c.Tq, c.Tk, c.D,
                                                   c.causal);
    for (AttentionBackend b : kAttentionBackends) {
      for (DType dtype : {DType::f64, DType::f32}) {
        const Tensor out = sdpa(q.to(dtype), k.to(dtype), v.to(dtype), c.causal, b);
        ASSERT_EQ(out.shape(), (Shape{c.B, c.H, c.Tq, c.D}));
        ASSERT_EQ(out.dtype(), dtype);
        const std::vector<double> got = out.to_vector<double>();
        const double tol = dtype == DType::f64 ? 1e-12 : 2e-6;
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], want[i], tol) << backend_name(b) << " " << dtype << " " << label(c)
                                            << " element " << i;
      }
    }
  }
}

TEST(Attention, CausalFirstRowCopiesFirstValue) {
  // Query 0 sees only key 0, so its output is v[0] whatever the scores are.
  const Tensor q = rand_input({1, 2, 6, 8}, -3, 3, 11).detach();
  const Tensor k = rand_input({1, 2, 6, 8}, -3, 3, 12).detach();
  const Tensor v = rand_input({1, 2, 6, 8}, -1, 1, 13).detach();
  for (AttentionBackend b : {AttentionBackend::naive, AttentionBackend::flash}) {
    const Tensor out = sdpa(q, k, v, true, b);
    for (int64_t h = 0; h < 2; ++h)
      EXPECT_EQ(max_abs_diff(out.select(1, h).select(1, 0), v.select(1, h).select(1, 0)), 0.0)
          << backend_name(b);
  }
}

TEST(Attention, NonContiguousInputs) {
  // q, k, v as views of a [B, T, 3, H, D] projection, permuted: how a GPT block makes them.
  const Tensor qkv = rand_input({2, 7, 3, 2, 8}, -1, 1, 21).detach();
  const Tensor q = qkv.select(2, 0).permute({0, 2, 1, 3});
  const Tensor k = qkv.select(2, 1).permute({0, 2, 1, 3});
  const Tensor v = qkv.select(2, 2).permute({0, 2, 1, 3});
  ASSERT_FALSE(q.is_contiguous());
  const Tensor want = sdpa(q.contiguous(), k.contiguous(), v.contiguous(), true, AttentionBackend::naive);
  for (AttentionBackend b : kAttentionBackends)
    EXPECT_LE(max_abs_diff(sdpa(q, k, v, true, b), want), 1e-12) << backend_name(b);
}

// ---------------------------------------------------------------- gradients
TEST(Attention, GradcheckNaiveAndFlash) {
  const std::vector<Case> cases = {
      {1, 2, 5, 5, 3, true}, {2, 1, 4, 4, 4, false}, {1, 1, 3, 6, 2, false}, {1, 1, 6, 2, 5, false},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    const Tensor q = rand_input({c.B, c.H, c.Tq, c.D}, -1, 1, ++seed);
    const Tensor k = rand_input({c.B, c.H, c.Tk, c.D}, -1, 1, ++seed);
    const Tensor v = rand_input({c.B, c.H, c.Tk, c.D}, -1, 1, ++seed);
    for (AttentionBackend b : {AttentionBackend::naive, AttentionBackend::flash}) {
      SCOPED_TRACE(std::string(backend_name(b)) + " " + label(c));
      EXPECT_GRADCHECK([&](const std::vector<Tensor>& in) { return sdpa(in[0], in[1], in[2], c.causal, b); },
                       {q, k, v});
    }
  }
}

// Flash against naive on shapes that cross the CPU tiles (64 rows) at odd lengths.
TEST(Attention, FlashMatchesNaiveForwardAndBackward) {
  const std::vector<Case> cases = {
      {1, 2, 1, 1, 32, true},     {2, 2, 17, 17, 32, true},    {1, 3, 64, 64, 64, true},
      {1, 2, 65, 65, 64, true},   {1, 2, 129, 129, 16, true},  {1, 1, 200, 200, 128, true},
      {2, 1, 33, 100, 64, false}, {1, 2, 150, 20, 32, false},  {1, 1, 300, 300, 64, false},
  };
  uint64_t seed = 200;
  for (const Case& c : cases) {
    for (DType dtype : {DType::f64, DType::f32}) {
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + label(c));
      const Tensor q0 = rand_input({c.B, c.H, c.Tq, c.D}, -2, 2, ++seed).detach().to(dtype);
      const Tensor k0 = rand_input({c.B, c.H, c.Tk, c.D}, -2, 2, ++seed).detach().to(dtype);
      const Tensor v0 = rand_input({c.B, c.H, c.Tk, c.D}, -1, 1, ++seed).detach().to(dtype);
      const Tensor g = rand_input({c.B, c.H, c.Tq, c.D}, -1, 1, ++seed).detach().to(dtype);
      std::vector<Tensor> results[2];
      for (int which = 0; which < 2; ++which) {
        const AttentionBackend b = which == 0 ? AttentionBackend::naive : AttentionBackend::flash;
        Tensor q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
        const Tensor out = sdpa(q, k, v, c.causal, b);
        out.backward(g);
        results[which] = {out.detach(), q.grad(), k.grad(), v.grad()};
      }
      const char* names[] = {"out", "dq", "dk", "dv"};
      const double rtol = dtype == DType::f64 ? 1e-12 : 1e-5;
      for (int i = 0; i < 4; ++i) {
        const double scale = std::max(1.0, max_abs(results[0][i]));
        EXPECT_LE(max_abs_diff(results[1][i], results[0][i]), rtol * scale) << names[i];
      }
    }
  }
}


// ---------------------------------------------------------------- PyTorch 1.13
// softmax(q k^T / sqrt(D) + mask) v and its gradients computed by torch from the same inputs.
TEST(Attention, NaiveMatchesTorch) {
  const std::string why = testing::python_unavailable(testing::kSystemPython, "torch, numpy");
  if (!why.empty()) GTEST_SKIP() << why;
  namespace fs = std::filesystem;
  const fs::path dir = testing::make_temp_dir("kiln_attention_");
  ASSERT_FALSE(dir.empty());
  const int64_t B = 2, H = 3, T = 9, D = 8;
  Tensor q = rand_input({B, H, T, D}, -2, 2, 301), k = rand_input({B, H, T, D}, -2, 2, 302);
  Tensor v = rand_input({B, H, T, D}, -1, 1, 303);
  const Tensor g = rand_input({B, H, T, D}, -1, 1, 304).detach();
  for (const auto& [name, t] : {std::pair{"q", q}, {"k", k}, {"v", v}, {"g", g}})
    testing::write_npy(dir / (std::string(name) + ".npy"), t.detach());
  const std::string script = R"(
import sys, numpy as np, torch
d = sys.argv[1]
q, k, v, g = (torch.from_numpy(np.load(f"{d}/{n}.npy")).requires_grad_() for n in "qkvg")
T = q.shape[2]
s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
out = torch.softmax(s, -1) @ v
out.backward(g.detach())
for n, t in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
    np.save(f"{d}/{n}_torch.npy", t.detach().numpy())
)";
  const fs::path py = dir / "attention.py";
  {
    std::FILE* f = std::fopen(py.c_str(), "w");
    ASSERT_TRUE(f);
    std::fputs(script.c_str(), f);
    std::fclose(f);
  }
  const testing::CommandResult r =
      testing::run_command(testing::kSystemPython + " " + py.string() + " " + dir.string() + " 2>&1");
  ASSERT_TRUE(r.ok) << r.failure;
  const Tensor out = sdpa(q, k, v, true, AttentionBackend::naive);
  out.backward(g);
  const std::vector<std::pair<std::string, Tensor>> ours = {
      {"out", out.detach()}, {"dq", q.grad()}, {"dk", k.grad()}, {"dv", v.grad()}};
  for (const auto& [name, t] : ours) {
    const testing::NpyArray want = testing::read_npy(dir / (name + "_torch.npy"));
    ASSERT_EQ(want.shape, t.shape()) << name;
    const std::vector<double> got = t.to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want.values[i], 1e-12) << name << " " << i;
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- autocast, errors
TEST(Attention, AutocastComputesInBf16) {
  for (AttentionBackend b : {AttentionBackend::naive, AttentionBackend::flash}) {
    const Tensor q = rand_input({1, 2, 5, 8}, -1, 1, 401).detach().to(DType::f32).requires_grad_();
    const Tensor k = rand_input({1, 2, 5, 8}, -1, 1, 402).detach().to(DType::f32).requires_grad_();
    const Tensor v = rand_input({1, 2, 5, 8}, -1, 1, 403).detach().to(DType::f32).requires_grad_();
    Tensor out;
    {
      AutocastGuard autocast(DType::bf16);
      out = sdpa(q, k, v, true, b);
    }
    EXPECT_EQ(out.dtype(), DType::bf16) << backend_name(b);
    const Tensor want = sdpa(q.detach(), k.detach(), v.detach(), true, AttentionBackend::naive);
    EXPECT_LE(max_abs_diff(out, want), 2e-2) << backend_name(b);
    sum(out.to(DType::f32)).backward();
    ASSERT_TRUE(q.grad().defined()) << backend_name(b);
    EXPECT_EQ(q.grad().dtype(), DType::f32) << backend_name(b);  // f32 master copies get f32 grads
  }
  // f64 stays f64 under autocast.
  AutocastGuard autocast(DType::bf16);
  const Tensor x = rand_input({1, 1, 3, 4}, -1, 1, 404).detach();
  EXPECT_EQ(sdpa(x, x, x, false, AttentionBackend::flash).dtype(), DType::f64);
}

TEST(Attention, CpuFlashSupportsBf16) {
  const Tensor q = rand_input({1, 2, 40, 32}, -2, 2, 501).detach();
  const Tensor k = rand_input({1, 2, 40, 32}, -2, 2, 502).detach();
  const Tensor v = rand_input({1, 2, 40, 32}, -1, 1, 503).detach();
  const Tensor want = sdpa(q, k, v, true, AttentionBackend::naive);
  const Tensor got = sdpa(q.to(DType::bf16), k.to(DType::bf16), v.to(DType::bf16), true, AttentionBackend::flash);
  EXPECT_EQ(got.dtype(), DType::bf16);
  EXPECT_LE(max_abs_diff(got, want), 2e-2);
}

TEST(Attention, EmptyQueriesOrKeys) {
  const Tensor q0 = zeros({1, 2, 0, 4}, {.dtype = DType::f64});
  const Tensor k = rand_input({1, 2, 3, 4}, -1, 1, 601).detach();
  for (AttentionBackend b : {AttentionBackend::naive, AttentionBackend::flash})
    EXPECT_EQ(sdpa(q0, k, k, false, b).shape(), (Shape{1, 2, 0, 4})) << backend_name(b);
}

TEST(Attention, BadArguments) {
  const Tensor q = zeros({1, 2, 4, 8}), k = zeros({1, 2, 5, 8});
  expect_error([&] { sdpa(q, k, k, true, AttentionBackend::naive); }, {"is_causal", "f32[1, 2, 4, 8]", "f32[1, 2, 5, 8]"});
  expect_error([&] { sdpa(q, zeros({1, 2, 4, 7}), zeros({1, 2, 4, 7}), false, AttentionBackend::flash); },
               {"[B, H, Tk, D]", "f32[1, 2, 4, 7]"});
  expect_error([&] { sdpa(q, q, zeros({1, 2, 3, 8}), false, AttentionBackend::naive); }, {"v f32[1, 2, 3, 8]"});
  expect_error([&] { sdpa(zeros({2, 4, 8}), q, q, false, AttentionBackend::naive); }, {"q [B, H, Tq, D]", "f32[2, 4, 8]"});
  expect_error([&] { sdpa(q, q.to(DType::f64), q, false, AttentionBackend::naive); }, {"share a dtype", "f64[1, 2, 4, 8]"});
  expect_error([&] { sdpa(zeros({1, 2, 4, 8}, {.dtype = DType::i64}), q, q, false, AttentionBackend::naive); },
               {"floating", "i64[1, 2, 4, 8]"});
}

TEST(Attention, ParseBackend) {
  EXPECT_EQ(parse_attention_backend("naive"), AttentionBackend::naive);
  EXPECT_EQ(parse_attention_backend("flash"), AttentionBackend::flash);
  EXPECT_EQ(parse_attention_backend("batched"), AttentionBackend::batched);
  expect_error([] { parse_attention_backend("sdpa"); }, {"unknown attention backend: sdpa", "naive, flash, batched"});
}

}  // namespace
}  // namespace kiln
