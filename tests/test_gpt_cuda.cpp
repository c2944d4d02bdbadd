// GPT-2 (models/gpt.h) on CUDA against the same model on the CPU: logits, loss and every
// parameter gradient, for each attention backend, in f32 and under bf16 autocast; and, on the
// GPU itself, the KV cache against the full forward and cached greedy generation against
// recomputation. Skips without a device.
//
// Tolerances (|cuda - cpu| relative to the largest |cpu| entry of the tensor; loss relative):
//   f32 (TF32 off, kiln's default)  logits 5e-5, loss 1e-5, gradients 2e-4: f32 GEMMs and
//        reductions summed in other orders (~1e-6 each), through 2 layers and backward
//   bf16 autocast (both devices)    logits 3e-2, loss 1e-2, gradients 5e-2: one bf16 rounding
//        (2^-8 = 4e-3 relative) of a GEMM output can land on the other side on each device
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/embedding.cu,
// kernels/cuda/layernorm.cu, kernels/cuda/linear.cu, kernels/cuda/attention.cu,
// kernels/cuda/flash_attention.cu, kernels/cuda/classifier.cu (a whole model).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "models/gpt.h"
#include "tests/gpt_testing.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using models::GPT;
using models::GPTConfig;
using testing::kCuda;

GPTConfig config(AttentionBackend backend) {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  c.block_size = 32;
  c.vocab_size = 97;
  c.padded_vocab_size = 128;
  c.attention = backend;
  return c;
}

// Weights redrawn larger than GPT-2's init so logits are not ~0 (testing::redraw_gpt_weights).
std::shared_ptr<GPT> make_model(AttentionBackend backend) {
  Generator gen(99);
  auto model = std::make_shared<GPT>(config(backend), &gen);
  testing::redraw_gpt_weights(*model, gen);
  return model;
}

double rel(const Tensor& a, const Tensor& b) {
  const Tensor ref = b.cpu();
  return max_abs_diff(a.cpu(), ref) / std::max(max_abs_diff(ref, zeros_like(ref)), 1e-30);
}

struct Result {
  Tensor logits, loss;
  nn::NamedTensors grads;
};

Result run(GPT& model, const Tensor& idx, const Tensor& targets, bool bf16) {
  Result r;
  {
    AutocastGuard autocast(DType::bf16, bf16);
    r.logits = model.forward(idx);
    r.loss = model.loss(r.logits, targets);
  }
  r.loss.backward();
  for (const auto& [name, p] : model.named_parameters()) r.grads.emplace_back(name, p.grad());
  return r;
}

TEST(GptCuda, MatchesCpuForEveryBackend) {
  KILN_SKIP_WITHOUT_CUDA();
  Generator gen(5);
  const Tensor idx = randint(0, 97, {4, 32}, {.dtype = DType::i64}, &gen);
  const Tensor targets = randint(0, 97, {4, 32}, {.dtype = DType::i64}, &gen);
  for (AttentionBackend backend : {AttentionBackend::naive, AttentionBackend::flash, AttentionBackend::batched}) {
    for (bool bf16 : {false, true}) {
      SCOPED_TRACE(std::string("backend ") + std::to_string(static_cast<int>(backend)) + (bf16 ? ", bf16" : ", f32"));
      const double tol_logits = bf16 ? 3e-2 : 5e-5, tol_loss = bf16 ? 1e-2 : 1e-5, tol_grad = bf16 ? 5e-2 : 2e-4;
      auto cpu_model = make_model(backend);
      auto cuda_model = make_model(backend);
      cuda_model->to(kCuda);
      const Result want = run(*cpu_model, idx, targets, bf16);
      const Result got = run(*cuda_model, idx.to(kCuda), targets.to(kCuda), bf16);
      ASSERT_TRUE(got.logits.is_cuda());
      EXPECT_LE(rel(got.logits, want.logits), tol_logits);
      EXPECT_NEAR(got.loss.item(), want.loss.item(), tol_loss * std::abs(want.loss.item()));
      double worst = 0;
      for (size_t i = 0; i < want.grads.size(); ++i) {
        ASSERT_TRUE(got.grads[i].second.defined()) << want.grads[i].first;
        const double e = rel(got.grads[i].second, want.grads[i].second);
        EXPECT_LE(e, tol_grad) << "gradient of " << want.grads[i].first;
        worst = std::max(worst, e);
      }
      std::printf("[backend %d, %s] logits %.2e, loss %.2e, worst gradient %.2e\n", static_cast<int>(backend),
                  bf16 ? "bf16" : "f32", rel(got.logits, want.logits),
                  std::abs(got.loss.item() - want.loss.item()) / std::abs(want.loss.item()), worst);
    }
  }
}

TEST(GptCuda, KvCacheAndGreedyGenerationOnTheDevice) {
  KILN_SKIP_WITHOUT_CUDA();
  for (AttentionBackend backend : {AttentionBackend::naive, AttentionBackend::flash, AttentionBackend::batched}) {
    auto model = make_model(backend);
    model->to(kCuda);
    model->eval();
    NoGradGuard no_grad;
    Generator gen(8);
    const Tensor idx = randint(0, 97, {2, 32}, {.dtype = DType::i64}, &gen).to(kCuda);
    const Tensor full = model->forward(idx);
    models::KVCache cache;
    std::vector<Tensor> parts;
    int64_t pos = 0;
    for (int64_t n : {7, 1, 1, 5, 1, 17}) {
      parts.push_back(model->forward_cached(idx.narrow(1, pos, n).contiguous(), cache));
      pos += n;
    }
    ASSERT_TRUE(cache.k[0].is_cuda());
    EXPECT_LE(rel(cat(parts, 1), full), 1e-5);

    // Greedy: the cache and recomputing the (cropped) context each step choose the same ids.
    const std::vector<int64_t> prompt = {5, 6, 7};
    const std::vector<int64_t> cached = models::generate(*model, prompt, 40, 0.0, 0);
    std::vector<int64_t> ids = prompt;
    for (int i = 0; i < 40; ++i) {
      const size_t len = std::min<size_t>(ids.size(), 32);
      const std::vector<int64_t> ctx(ids.end() - len, ids.end());
      const Tensor logits = model->forward(from_vector(ctx, {1, static_cast<int64_t>(len)}).to(kCuda));
      ids.push_back(argmax(logits.select(0, 0).select(0, len - 1).narrow(0, 0, 97), 0).item<int64_t>());
    }
    EXPECT_EQ(cached, ids);
  }
}

}  // namespace
}  // namespace kiln
