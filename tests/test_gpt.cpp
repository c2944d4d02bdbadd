// GPT-2 (models/gpt.h) on the CPU: names, shapes, sizes, init, the tied head's gradient, loss at
// init, overfitting one batch, the KV cache against full recomputation, sampling, the registry
// and the Hugging Face name mapping. Parity with PyTorch is in test_gpt_parity.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "models/gpt.h"
#include "models/registry.h"
#include "optim/adam.h"
#include "data/bpe_tokenizer.h"
#include "tests/expect_error.h"
#include "tests/kiln_cli.h"
#include "tests/python_oracle.h"
#include "tools/io/checkpoint.h"

namespace kiln {
namespace {

using models::GPT;
using models::GPTConfig;
using testing::expect_error;

GPTConfig small_config(int64_t n_layer = 2, int64_t n_embd = 32, int64_t n_head = 4, int64_t block = 16,
                       int64_t vocab = 50) {
  GPTConfig c;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.block_size = block;
  c.vocab_size = vocab;
  c.padded_vocab_size = models::padded_vocab_size(vocab);
  return c;
}

// Tokens 0..vocab-1 drawn from a seed.
Tensor tokens(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  return randint(0, vocab, {B, T}, {.dtype = DType::i64}, &gen);
}

double stddev(const Tensor& t) { return std::sqrt(var(t.flatten()).item()); }

// ---------------------------------------------------------------- structure

TEST(Gpt, ParameterNamesAreHuggingFaceAndNanoGpts) {
  GPT model(small_config(1));
  std::vector<std::string> names;
  for (const auto& [name, p] : model.named_parameters()) names.push_back(name);
  const std::vector<std::string> want = {
      "transformer.wte.weight",          "transformer.wpe.weight",
      "transformer.h.0.ln_1.weight",     "transformer.h.0.ln_1.bias",
      "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
      "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
      "transformer.h.0.ln_2.weight",     "transformer.h.0.ln_2.bias",
      "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
      "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
      "transformer.ln_f.weight",         "transformer.ln_f.bias"};
  EXPECT_EQ(names, want);
  EXPECT_TRUE(model.named_buffers().empty());
}

TEST(Gpt, ShapesAndBadInputs) {
  const GPTConfig cfg = small_config();
  GPT model(cfg);
  EXPECT_EQ(model.config().padded_vocab_size, 128);
  EXPECT_EQ(model.wte->weight.shape(), (Shape{128, 32}));
  EXPECT_EQ(model.h[0]->attn->c_attn->weight.shape(), (Shape{96, 32}));  // [3C, C], nn.Linear layout
  EXPECT_EQ(model.h[0]->mlp->c_fc->weight.shape(), (Shape{128, 32}));
  EXPECT_EQ(model.forward(tokens(3, 16, 50, 1)).shape(), (Shape{3, 16, 128}));
  EXPECT_EQ(model.forward(tokens(2, 5, 50, 1)).shape(), (Shape{2, 5, 128}));
  expect_error([&] { model.forward(tokens(1, 17, 50, 1)); }, {"sequence length 17", "block_size = 16"});
  expect_error([&] { model.forward(zeros({2, 4})); }, {"f32[2, 4]", "i64 [B, T]"});
  expect_error([&] { model.loss(zeros({2, 4, 50}), zeros({2, 4}, {.dtype = DType::i64})); }, {"[B, T, 128]"});
}

TEST(Gpt, PaddedVocabRoundsUpTo128) {
  EXPECT_EQ(models::padded_vocab_size(50257), 50304);
  EXPECT_EQ(models::padded_vocab_size(256), 256);
  EXPECT_EQ(models::padded_vocab_size(97), 128);
  EXPECT_EQ(models::padded_vocab_size(1), 128);
}

// llm.c's numbers: 124,475,904 parameters with the vocab padded to 50304 (what train_gpt2
// prints), 124,439,808 with 50257 (Hugging Face's count of GPT2Model).
TEST(Gpt, Gpt2SmallHasLlmcsParameterCount) {
  GPTConfig cfg = models::gpt_preset("gpt2-124M");
  EXPECT_EQ(cfg.n_layer, 12);
  EXPECT_EQ(cfg.n_embd, 768);
  EXPECT_EQ(cfg.padded_vocab_size, 50304);
  GPT model(cfg);
  int64_t counted = 0;
  for (const auto& [name, p] : model.named_parameters()) counted += p.numel();
  EXPECT_EQ(counted, 124475904);
  EXPECT_EQ(models::gpt_num_parameters(cfg), 124475904);
  cfg.padded_vocab_size = cfg.vocab_size;
  EXPECT_EQ(models::gpt_num_parameters(cfg), 124439808);
  // gpt2-medium: 24 layers, 1024 wide: 354,823,168 parameters with 50257 tokens (HF's GPT2Model).
  GPTConfig medium = models::gpt_preset("gpt2-medium");
  medium.padded_vocab_size = medium.vocab_size;
  EXPECT_EQ(models::gpt_num_parameters(medium), 354823168);
}

TEST(Gpt, Gpt2Init) {
  GPTConfig cfg = small_config(4, 256, 4, 64, 300);
  Generator gen(5);
  GPT model(cfg, &gen);
  EXPECT_NEAR(stddev(model.wte->weight.narrow(0, 0, 300)), 0.02, 0.001);
  EXPECT_NEAR(stddev(model.wpe->weight), 0.02, 0.001);
  const double proj_std = 0.02 / std::sqrt(2.0 * 4);
  for (auto& block : model.h) {
    EXPECT_NEAR(stddev(block->attn->c_attn->weight), 0.02, 0.001);
    EXPECT_NEAR(stddev(block->mlp->c_fc->weight), 0.02, 0.001);
    EXPECT_NEAR(stddev(block->attn->c_proj->weight), proj_std, 0.0006);
    EXPECT_NEAR(stddev(block->mlp->c_proj->weight), proj_std, 0.0006);
    for (const Tensor& b : {block->attn->c_attn->bias, block->attn->c_proj->bias, block->mlp->c_fc->bias,
                            block->mlp->c_proj->bias, block->ln_1->bias, block->ln_2->bias})
      EXPECT_EQ(max_abs_diff(b, zeros_like(b)), 0.0);
    EXPECT_EQ(max_abs_diff(block->ln_1->weight, ones_like(block->ln_1->weight)), 0.0);
  }
  const Tensor pad = model.wte->weight.narrow(0, 300, cfg.padded_vocab_size - 300);
  EXPECT_EQ(max_abs_diff(pad, zeros_like(pad)), 0.0);
  // Same seed, same weights.
  Generator again(5);
  GPT twin(cfg, &again);
  for (size_t i = 0; i < model.parameters().size(); ++i)
    EXPECT_EQ(max_abs_diff(model.parameters()[i], twin.parameters()[i]), 0.0);
}

// ---------------------------------------------------------------- training

// GPT-2's init makes logits of std ~0.02 sqrt(C) (0.23 here), so the loss is ln V plus about
// half their variance (~0.03 nats).
TEST(Gpt, LossAtInitIsNearLnVocab) {
  Generator gen(31);
  GPT model(models::gpt_preset("gpt-char-tiny"), &gen);
  const Tensor idx = tokens(4, 64, 256, 11), targets = tokens(4, 64, 256, 12);
  const double loss = model.loss(model.forward(idx), targets).item();
  EXPECT_NEAR(loss, std::log(256.0), 0.1);
}

// The lm_head shares wte: wte's gradient must hold both uses. Checked in f64 against central
// differences of the loss on entries of a row that is looked up (both uses) and of one that
// is not (lm_head only).
TEST(Gpt, TiedWeightGetsBothGradients) {
  GPTConfig cfg = small_config(1, 16, 2, 8, 20);
  Generator gen(3);
  GPT model(cfg, &gen);
  for (Tensor& p : model.parameters()) p.set_data((p.detach() * 20.0).to(DType::f64));  // make both paths matter
  std::vector<int64_t> ids = {1, 2, 3, 1, 5, 6, 7, 2};
  const Tensor idx = from_vector(ids, {1, 8});
  const Tensor targets = from_vector(std::vector<int64_t>{2, 3, 1, 5, 6, 7, 2, 4}, {1, 8});
  model.loss(model.forward(idx), targets).backward();
  const Tensor grad = model.wte->weight.grad();

  NoGradGuard no_grad;
  Tensor& w = model.wte->weight;
  auto loss_at = [&](int64_t row, int64_t col, double delta) {
    Tensor entry = w.narrow(0, row, 1).narrow(1, col, 1);
    const double old = entry.item();
    entry.fill_(old + delta);
    const double l = model.loss(model.forward(idx), targets).item();
    entry.fill_(old);
    return l;
  };
  for (int64_t row : {2, 9}) {  // 2 is looked up and a target; 9 only meets the lm_head
    for (int64_t col : {0, 7, 15}) {
      const double h = 1e-6;
      const double numeric = (loss_at(row, col, h) - loss_at(row, col, -h)) / (2 * h);
      const double analytic = grad.narrow(0, row, 1).narrow(1, col, 1).item();
      EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << "wte[" << row << ", " << col << "]";
    }
  }
  // The padding rows (20..127) get none.
  const Tensor pad = grad.narrow(0, 20, 108);
  EXPECT_EQ(max_abs_diff(pad, zeros_like(pad)), 0.0);
}

TEST(Gpt, OverfitsOneBatch) {
  GPTConfig cfg = small_config(2, 64, 4, 16, 64);
  Generator gen(42);
  GPT model(cfg, &gen);
  const Tensor idx = tokens(4, 16, 64, 21), targets = tokens(4, 16, 64, 22);
  AdamW opt({ParamGroup{.params = model.parameters(), .weight_decay = 0.0}}, {.lr = 3e-3});
  double first = 0, last = 0;
  for (int step = 0; step < 50; ++step) {
    opt.zero_grad();
    Tensor loss = model.loss(model.forward(idx), targets);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item();
  }
  std::printf("overfit: loss %.4f -> %.4f after 50 AdamW steps (ln V = %.4f)\n", first, last, std::log(64.0));
  EXPECT_NEAR(first, std::log(64.0), 0.1);
  EXPECT_LT(last, 0.5);
}

TEST(Gpt, DropoutOnlyInTraining) {
  GPTConfig cfg = small_config();
  cfg.dropout = 0.2;
  Generator g1(8), g2(8);
  GPT dropped(cfg, &g1);
  cfg.dropout = 0.0;
  GPT plain(cfg, &g2);
  const Tensor idx = tokens(2, 16, 50, 4);
  dropped.eval();
  plain.eval();
  EXPECT_EQ(max_abs_diff(dropped.forward(idx), plain.forward(idx)), 0.0);
  dropped.train();
  const Tensor a = dropped.forward(idx), b = dropped.forward(idx);
  EXPECT_GT(max_abs_diff(a, b), 1e-3);  // fresh masks each call
  dropped.loss(a, tokens(2, 16, 50, 5)).backward();  // the explicit attention path has a backward
  EXPECT_TRUE(dropped.h[0]->attn->c_attn->weight.grad().defined());
}

// Mixed precision as the runner uses it: under bf16 autocast the GEMMs run in bf16 while
// LayerNorms, the residual stream and the loss stay f32, and f32 weights get f32 gradients.
// The loss and gradients stay close to f32's (bf16 keeps 8 bits of mantissa).
TEST(Gpt, TrainsUnderAutocast) {
  for (DType half : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(std::string(dtype_name(half)));
    Generator gen(12);
    GPT model(small_config(2, 64, 4, 16, 64), &gen);
    const Tensor idx = tokens(2, 16, 64, 3), targets = tokens(2, 16, 64, 4);
    const Tensor ref_loss = model.loss(model.forward(idx), targets);
    ref_loss.backward();
    const Tensor ref_grad = model.h[1]->mlp->c_fc->weight.grad().clone();
    model.zero_grad();
    Tensor loss;
    {
      AutocastGuard autocast(half);
      const Tensor logits = model.forward(idx);
      EXPECT_EQ(logits.dtype(), half);  // the tied head is a GEMM: it ran in half precision
      loss = model.loss(logits, targets);
    }
    EXPECT_EQ(loss.dtype(), DType::f32);
    loss.backward();
    EXPECT_NEAR(loss.item(), ref_loss.item(), 2e-3 * ref_loss.item());
    const Tensor grad = model.h[1]->mlp->c_fc->weight.grad();
    ASSERT_EQ(grad.dtype(), DType::f32);
    const double grad_err = max_abs_diff(grad, ref_grad) / max_abs_diff(ref_grad, zeros_like(ref_grad));
    EXPECT_LE(grad_err, 0.03);
    std::printf("%s autocast: loss %.5f vs f32 %.5f, c_fc gradient %.2e relative\n", std::string(dtype_name(half)).c_str(),
                loss.item(), ref_loss.item(), grad_err);
  }
}

// ---------------------------------------------------------------- KV cache and generation

// A model whose logits are far from uniform, so greedy choices are not near-ties.
std::unique_ptr<GPT> peaked_model(const GPTConfig& cfg, uint64_t seed) {
  Generator gen(seed);
  auto model = std::make_unique<GPT>(cfg, &gen);
  NoGradGuard no_grad;
  for (Tensor& p : model->parameters()) p.mul_(10.0);
  model->eval();
  return model;
}

// Logits of idx [2, 16] fed through the cache in pieces: a prompt of 5 (empty cache: causal),
// one token at a time, a chunk of 4 after cached positions (shifted mask), then one by one.
// Returns max |cached - full| / max |full|.
double cached_vs_full(GPT& model, const Tensor& idx) {
  NoGradGuard no_grad;
  const Tensor full = model.forward(idx);
  models::KVCache cache;
  std::vector<Tensor> parts;
  int64_t pos = 0;
  for (int64_t n : {5, 1, 1, 4, 1, 1, 1, 1, 1}) {
    parts.push_back(model.forward_cached(idx.narrow(1, pos, n).contiguous(), cache));
    pos += n;
    EXPECT_EQ(cache.length, pos);
  }
  EXPECT_EQ(pos, 16);
  expect_error([&] { model.forward_cached(idx.narrow(1, 0, 1).contiguous(), cache); },
               {"KV cache holds 16", "block_size = 16"});
  return max_abs_diff(cat(parts, 1), full) / max_abs_diff(full, zeros_like(full));
}

// In f64 the cache must reproduce the full forward to rounding; in f32 (GPT-2 init) to f32
// rounding of differently ordered sums.
TEST(Gpt, CachedLogitsEqualFullRecomputation) {
  const GPTConfig cfg = small_config(2, 32, 4, 16, 50);
  const Tensor idx = tokens(2, 16, 50, 13);
  auto peaked = peaked_model(cfg, 9);
  for (Tensor& p : peaked->parameters()) p.set_data(p.detach().to(DType::f64));
  const double err64 = cached_vs_full(*peaked, idx);
  EXPECT_LE(err64, 1e-12);
  Generator gen(9);
  GPT model(cfg, &gen);
  model.eval();
  const double err32 = cached_vs_full(model, idx);
  EXPECT_LE(err32, 1e-5);
  std::printf("KV cache vs full forward: f64 %.2e, f32 %.2e (relative to max |logit|)\n", err64, err32);
}

// Greedy generation by recomputing the whole (cropped) context every step, as nanoGPT does.
std::vector<int64_t> greedy_by_recomputation(GPT& model, std::vector<int64_t> ids, int64_t n) {
  NoGradGuard no_grad;
  const int64_t block = model.config().block_size, V = model.config().vocab_size;
  for (int64_t i = 0; i < n; ++i) {
    const size_t len = std::min(ids.size(), static_cast<size_t>(block));
    const std::vector<int64_t> ctx(ids.end() - len, ids.end());
    const Tensor logits = model.forward(from_vector(ctx, {1, static_cast<int64_t>(len)}));
    const Tensor last = logits.select(0, 0).select(0, static_cast<int64_t>(len) - 1).narrow(0, 0, V);
    ids.push_back(argmax(last, 0).item<int64_t>());
  }
  return ids;
}

TEST(Gpt, GreedyGenerationWithCacheEqualsRecomputation) {
  const GPTConfig cfg = small_config(2, 32, 4, 16, 50);
  auto model = peaked_model(cfg, 17);
  const std::vector<int64_t> prompt = {3, 14, 15, 9};
  // 30 new tokens: the sequence passes block_size = 16, so the cropped context is exercised.
  const std::vector<int64_t> cached = models::generate(*model, prompt, 30, 0.0, 0);
  const std::vector<int64_t> recomputed = greedy_by_recomputation(*model, prompt, 30);
  EXPECT_EQ(cached.size(), 34u);
  EXPECT_EQ(cached, recomputed);
  std::set<int64_t> distinct(cached.begin() + 4, cached.end());
  EXPECT_GT(distinct.size(), 1u) << "a degenerate model would make this comparison weak";
}

TEST(Gpt, GenerateStreamsTokensAndRestoresMode) {
  auto model = peaked_model(small_config(), 2);
  model->train();
  std::vector<int64_t> streamed;
  const std::vector<int64_t> ids = models::generate(*model, {1, 2}, 10, 0.8, 5, nullptr, [&](int64_t t) {
    streamed.push_back(t);
    return streamed.size() < 6;  // stop after 6
  });
  EXPECT_EQ(streamed.size(), 6u);
  EXPECT_EQ(std::vector<int64_t>(ids.begin() + 2, ids.end()), streamed);
  EXPECT_TRUE(model->is_training());
  for (int64_t t : ids) EXPECT_LT(t, 50);  // never a padding column
  expect_error([&] { models::generate(*model, {}, 1, 1.0, 0); }, {"prompt is empty"});
  expect_error([&] { models::generate(*model, {50}, 1, 1.0, 0); }, {"prompt token 50"});
}

TEST(Gpt, SamplingIsSeededAndTopKLimited) {
  GPT init_model(small_config());  // GPT-2 init: nearly uniform logits, so draws differ by seed
  GPT* model = &init_model;
  Generator a(123), b(123), c(124);
  const auto first = models::generate(*model, {7}, 20, 1.0, 0, &a);
  EXPECT_EQ(first, models::generate(*model, {7}, 20, 1.0, 0, &b));
  EXPECT_NE(first, models::generate(*model, {7}, 20, 1.0, 0, &c));
  // top_k = 1 is greedy.
  Generator d(1);
  EXPECT_EQ(models::generate(*model, {7}, 20, 1.0, 1, &d), models::generate(*model, {7}, 20, 0.0, 0));
}

// sample_token's frequencies follow softmax(logits / temperature) over the top k.
TEST(Gpt, SampleTokenFollowsTheTopKSoftmax) {
  // Columns 0..5 real, 6..7 padding (huge, must never be drawn).
  const Tensor logits = from_vector(std::vector<double>{0.0, 1.0, 3.0, 2.0, -1.0, 2.5, 50.0, 50.0}, {8});
  Generator gen(99);
  const int n = 20000;
  std::map<int64_t, int> count;
  for (int i = 0; i < n; ++i) count[models::sample_token(logits, 6, 2.0, 3, &gen)]++;
  // top 3: ids 2 (3.0), 5 (2.5), 3 (2.0); p ~ exp(z / 2).
  const double z = std::exp(1.5) + std::exp(1.25) + std::exp(1.0);
  const std::map<int64_t, double> p = {{2, std::exp(1.5) / z}, {5, std::exp(1.25) / z}, {3, std::exp(1.0) / z}};
  EXPECT_EQ(count.size(), 3u);
  for (const auto& [id, prob] : p) {
    const double sigma = std::sqrt(prob * (1 - prob) / n);
    EXPECT_NEAR(count[id] / static_cast<double>(n), prob, 4 * sigma) << "token " << id;
  }
  EXPECT_EQ(models::sample_token(logits, 6, 0.0, 0), 2);  // greedy ignores the padding
  expect_error([&] { models::sample_token(logits, 9, 1.0, 0); }, {"vocab_size 9"});
}

// ---------------------------------------------------------------- registry and presets

TEST(Gpt, RegisteredWithPresetsAndOverrides) {
  models::ModelSpec spec;
  spec.name = "gpt";
  spec.preset = "gpt-char-tiny";
  auto tiny = std::dynamic_pointer_cast<GPT>(models::make_model(spec));
  ASSERT_TRUE(tiny);
  EXPECT_EQ(tiny->config().n_layer, 4);
  EXPECT_EQ(tiny->config().n_embd, 128);
  EXPECT_EQ(tiny->config().n_head, 4);
  EXPECT_EQ(tiny->config().block_size, 128);
  EXPECT_EQ(tiny->config().padded_vocab_size, 256);

  spec.n_layer = 2;
  spec.vocab_size = 300;
  spec.attention = "flash";
  spec.dropout = 0.1;
  const GPTConfig c = models::gpt_config(spec);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_embd, 128);
  EXPECT_EQ(c.padded_vocab_size, 384);
  EXPECT_EQ(c.attention, AttentionBackend::flash);
  EXPECT_EQ(c.dropout, 0.1);

  spec.preset = "gpt5";
  expect_error([&] { models::gpt_config(spec); }, {"unknown GPT preset 'gpt5'", "gpt2-124M", "gpt-char-tiny"});
  models::ModelSpec bare;
  bare.name = "gpt";
  bare.n_layer = 2;
  expect_error([&] { models::make_model(bare); }, {"model.n_head"});
  bare.n_head = 3;
  bare.n_embd = 32;
  bare.block_size = 8;
  bare.vocab_size = 10;
  expect_error([&] { models::make_model(bare); }, {"model.n_embd (32)", "model.n_head (3)"});
}

// ---------------------------------------------------------------- Hugging Face names

// kiln's state dict written the way Hugging Face stores GPT-2 (optionally with GPT2LMHeadModel's
// "transformer." prefix), mapped back, gives the same tensors.
TEST(Gpt, HuggingFaceMappingInvertsTheirLayout) {
  const GPTConfig cfg = small_config(2, 32, 4, 16, 50);
  Generator gen(6);
  GPT model(cfg, &gen);
  for (const std::string prefix : {"", "transformer."}) {
    nn::NamedTensors hf;
    for (const auto& [name, t] : model.state_dict()) {
      std::string n = name.substr(12);  // without "transformer."
      Tensor v = t;
      if (n.ends_with("c_attn.weight") || n.ends_with("c_proj.weight") || n.ends_with("c_fc.weight"))
        v = t.t().contiguous();  // Conv1D: [in, out]
      if (n == "wte.weight") v = t.narrow(0, 0, 50).contiguous();  // Hugging Face does not pad
      hf.emplace_back(prefix + n, v);
      if (n == "h.0.ln_1.weight") hf.emplace_back(prefix + "h.0.attn.masked_bias", scalar_tensor(-1e4));
    }
    hf.emplace_back("lm_head.weight", model.wte->weight.narrow(0, 0, 50).contiguous());
    const nn::NamedTensors back = models::gpt_state_dict_from_hf(hf, cfg);
    std::map<std::string, Tensor> got(back.begin(), back.end());
    EXPECT_EQ(got.size(), model.state_dict().size());
    for (const auto& [name, t] : model.state_dict()) {
      ASSERT_TRUE(got.count(name)) << prefix << ": " << name << " missing";
      ASSERT_EQ(got[name].shape(), t.shape()) << name;
      EXPECT_EQ(max_abs_diff(got[name], t), 0.0) << name;
    }
  }
  expect_error([&] { models::gpt_state_dict_from_hf({{"score.weight", zeros({2})}}, cfg); },
               {"unexpected tensor 'score.weight'"});
  expect_error([&] { models::gpt_state_dict_from_hf({{"wte.weight", zeros({60, 32})}}, cfg); },
               {"wte.weight is f32[60, 32]", "[50, 32]"});
  expect_error(
      [&] {
        models::gpt_state_dict_from_hf({{"wte.weight", zeros({50, 32})}, {"lm_head.weight", ones({50, 32})}}, cfg);
      },
      {"lm_head.weight differs"});
}

// ---------------------------------------------------------------- kiln generate

// The CLI streams exactly what models::generate chooses for the same weights, prompt and seed:
// greedy, and sampled with temperature and top-k.
TEST(GptGenerateCli, StreamsWhatGenerateChooses) {
  namespace fs = std::filesystem;
  const fs::path kiln_bin = testing::kiln_binary();
  ASSERT_TRUE(fs::exists(kiln_bin)) << kiln_bin << " not built (set KILN_BUILD_DIR)";
  const fs::path dir = testing::make_temp_dir("kiln_generate_");
  ASSERT_FALSE(dir.empty());

  GPTConfig cfg = models::gpt_preset("gpt-char-tiny");
  cfg.n_layer = 2;
  cfg.block_size = 32;  // 40 new tokens pass it: the cropped context runs through the CLI too
  Generator init(77);
  GPT model(cfg, &init);
  {
    NoGradGuard no_grad;
    for (Tensor& p : model.parameters()) p.mul_(5.0);  // varied greedy text
  }
  io::CheckpointContents contents;
  contents.model = model.state_dict();
  io::save_checkpoint(dir, 1, contents, 0);
  std::ofstream(dir / "gen.yaml") << "model:\n  name: gpt\n  preset: gpt-char-tiny\n  n_layer: 2\n  block_size: 32\n"
                                  << "data:\n  tokenizer: byte\ndevice: cpu\n";

  const BpeTokenizer bytes;
  auto expected = [&](double temperature, int64_t top_k, Generator* gen) {
    std::vector<int64_t> prompt;
    for (int32_t id : bytes.encode("To be")) prompt.push_back(id);
    std::vector<int32_t> ids;
    for (int64_t id : models::generate(model, prompt, 40, temperature, top_k, gen)) ids.push_back(static_cast<int32_t>(id));
    return bytes.decode(ids) + "\n";
  };
  auto cli = [&](const std::string& args) {
    const testing::CommandResult r =
        testing::run_command(kiln_bin.string() + " generate '" + (dir / "gen.yaml").string() + "' checkpoint='" +
                             dir.string() + "' prompt='To be' max_tokens=40 " + args + " 2>/dev/null");
    EXPECT_TRUE(r.ok) << r.failure;
    return r.output;
  };
  EXPECT_EQ(cli("temperature=0"), expected(0.0, 0, nullptr));
  Generator seeded(5);
  const std::string sampled = expected(0.9, 20, &seeded);
  EXPECT_EQ(cli("temperature=0.9 top_k=20 seed=5"), sampled);
  EXPECT_NE(cli("temperature=0.9 top_k=20 seed=6"), sampled);

  const testing::CommandResult missing =
      testing::run_command(kiln_bin.string() + " generate '" + (dir / "gen.yaml").string() + "' prompt=x 2>&1");
  EXPECT_FALSE(missing.ok);
  EXPECT_NE(missing.output.find("pass checkpoint=PATH"), std::string::npos) << missing.output;
  std::error_code ec;
  if (!::testing::Test::HasFailure()) fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace kiln
