// GPT-2, top to bottom: config and presets, attention, MLP, block, the model (init, forward,
// cached forward, loss), sampling and generation, then the Hugging Face weight mapping.
#include "models/gpt.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>
#include <tuple>

#include "core/autograd.h"
#include "core/generator.h"
#include "nn/init.h"

namespace kiln::models {

// ---------------------------------------------------------------- config

int64_t padded_vocab_size(int64_t vocab_size) { return (vocab_size + 127) / 128 * 128; }

namespace {

struct Preset {
  int64_t n_layer, n_head, n_embd, block_size, vocab_size;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> p = {
      {"gpt2-124M", {12, 12, 768, 1024, 50257}},  {"gpt2-medium", {24, 16, 1024, 1024, 50257}},
      {"gpt2-large", {36, 20, 1280, 1024, 50257}}, {"gpt2-xl", {48, 25, 1600, 1024, 50257}},
      {"gpt2-mini", {6, 6, 384, 256, 50257}},      {"gpt-char-tiny", {4, 4, 128, 128, 256}},
  };
  return p;
}

}  // namespace

std::vector<std::string> gpt_preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, p] : presets()) names.push_back(name);
  return names;
}

GPTConfig gpt_preset(const std::string& name) {
  auto it = presets().find(name);
  if (it == presets().end()) {
    std::string known;
    for (const std::string& n : gpt_preset_names()) known += (known.empty() ? "" : ", ") + n;
    KILN_CHECK(false, "unknown GPT preset '", name, "' (known presets: ", known, ")");
  }
  const Preset& p = it->second;
  GPTConfig cfg;
  cfg.n_layer = p.n_layer;
  cfg.n_head = p.n_head;
  cfg.n_embd = p.n_embd;
  cfg.block_size = p.block_size;
  cfg.vocab_size = p.vocab_size;
  cfg.padded_vocab_size = padded_vocab_size(p.vocab_size);
  return cfg;
}

GPTConfig gpt_config(const ModelSpec& spec) {
  GPTConfig cfg = spec.preset.empty() ? GPTConfig{0, 0, 0, 0, 0, 0} : gpt_preset(spec.preset);
  auto take = [&](int64_t value, int64_t& field, const char* name) {
    KILN_CHECK(value >= 0, "model.", name, " must be >= 0 (0: the preset's), got ", value);
    if (value > 0) field = value;
    KILN_CHECK(field > 0, "model gpt: set model.", name, " or a model.preset (",
               "e.g. gpt2-124M or gpt-char-tiny)");
  };
  take(spec.n_layer, cfg.n_layer, "n_layer");
  take(spec.n_head, cfg.n_head, "n_head");
  take(spec.n_embd, cfg.n_embd, "n_embd");
  take(spec.block_size, cfg.block_size, "block_size");
  take(spec.vocab_size, cfg.vocab_size, "vocab_size");
  cfg.padded_vocab_size = spec.padded_vocab_size > 0 ? spec.padded_vocab_size : padded_vocab_size(cfg.vocab_size);
  KILN_CHECK(cfg.padded_vocab_size >= cfg.vocab_size, "model.padded_vocab_size (", cfg.padded_vocab_size,
             ") is smaller than model.vocab_size (", cfg.vocab_size, ")");
  KILN_CHECK(cfg.n_embd % cfg.n_head == 0, "model.n_embd (", cfg.n_embd, ") must be a multiple of model.n_head (",
             cfg.n_head, ")");
  KILN_CHECK(spec.dropout >= 0 && spec.dropout < 1, "model.dropout must be in [0, 1), got ", spec.dropout);
  cfg.dropout = spec.dropout;
  cfg.attention = parse_attention_backend(spec.attention);
  return cfg;
}

int64_t gpt_num_parameters(const GPTConfig& c) {
  const int64_t C = c.n_embd;
  const int64_t per_layer = 2 * C                // ln_1
                            + C * 3 * C + 3 * C  // attn.c_attn
                            + C * C + C          // attn.c_proj
                            + 2 * C              // ln_2
                            + C * 4 * C + 4 * C  // mlp.c_fc
                            + 4 * C * C + C;     // mlp.c_proj
  return c.padded_vocab_size * C + c.block_size * C + c.n_layer * per_layer + 2 * C;
}

// ---------------------------------------------------------------- attention

CausalSelfAttention::CausalSelfAttention(const GPTConfig& cfg, Generator* gen)
    : Module("CausalSelfAttention"),
      n_head_(cfg.n_head),
      n_embd_(cfg.n_embd),
      dropout_(cfg.dropout),
      backend_(cfg.attention) {
  c_attn = register_module("c_attn", std::make_shared<nn::Linear>(cfg.n_embd, 3 * cfg.n_embd, true, gen));
  c_proj = register_module("c_proj", std::make_shared<nn::Linear>(cfg.n_embd, cfg.n_embd, true, gen));
}

namespace {

// q, k, v [B, H, T, D] from the fused projection qkv [B, T, 3C] (views, no copies).
std::tuple<Tensor, Tensor, Tensor> split_heads(const Tensor& qkv, int64_t n_head) {
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3;
  auto head = [&](int64_t i) { return qkv.narrow(2, i * C, C).view({B, T, n_head, C / n_head}).transpose(1, 2); };
  return {head(0), head(1), head(2)};
}

// [B, H, T, D] -> [B, T, C]
Tensor merge_heads(const Tensor& y) {
  const int64_t B = y.size(0), H = y.size(1), T = y.size(2), D = y.size(3);
  return y.transpose(1, 2).reshape({B, T, H * D});
}

}  // namespace

Tensor CausalSelfAttention::attend(const Tensor& q, const Tensor& k, const Tensor& v, int64_t past,
                                   bool train_dropout) {
  const int64_t Tq = q.size(2), Tk = k.size(2);
  const bool drop = train_dropout && dropout_ > 0;
  // The fused backends take a plain causal mask (Tq == Tk) or none (one query sees all keys).
  if (!drop && past == 0) return scaled_dot_product_attention(q, k, v, /*is_causal=*/true, backend_);
  if (!drop && Tq == 1) return scaled_dot_product_attention(q, k, v, /*is_causal=*/false, backend_);
  // Attention dropout needs the probabilities, which the fused backends never form, and a
  // prompt chunk after cached positions needs a shifted mask: spell it out.
  const Tensor future = causal_mask(Tq, Tk, q.device(), past);
  const Tensor minus_inf = scalar_tensor(-std::numeric_limits<double>::infinity(), q.options());
  Tensor att = matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(3))));
  att = softmax(where(future, minus_inf, att), -1);
  att = dropout(att, dropout_, drop);
  return matmul(att, v);
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  KILN_CHECK(x.dim() == 3 && x.size(2) == n_embd_, "CausalSelfAttention: input ", x.meta_str(),
             " is not [B, T, ", n_embd_, "]");
  auto [q, k, v] = split_heads(c_attn->forward(x), n_head_);
  const Tensor y = merge_heads(attend(q, k, v, /*past=*/0, is_training()));
  return dropout(c_proj->forward(y), dropout_, is_training());
}

Tensor CausalSelfAttention::forward_cached(const Tensor& x, Tensor& k_cache, Tensor& v_cache, int64_t past) {
  const int64_t Tn = x.size(1);
  auto [q, k, v] = split_heads(c_attn->forward(x), n_head_);
  k_cache.narrow(2, past, Tn).copy_(k);
  v_cache.narrow(2, past, Tn).copy_(v);
  const Tensor keys = k_cache.narrow(2, 0, past + Tn), values = v_cache.narrow(2, 0, past + Tn);
  return c_proj->forward(merge_heads(attend(q, keys, values, past, /*train_dropout=*/false)));
}

// ---------------------------------------------------------------- MLP and block

MLP::MLP(const GPTConfig& cfg, Generator* gen) : Module("MLP"), dropout_(cfg.dropout) {
  c_fc = register_module("c_fc", std::make_shared<nn::Linear>(cfg.n_embd, 4 * cfg.n_embd, true, gen));
  c_proj = register_module("c_proj", std::make_shared<nn::Linear>(4 * cfg.n_embd, cfg.n_embd, true, gen));
}

Tensor MLP::forward(const Tensor& x) {
  const Tensor hidden = linear(x, c_fc->weight, c_fc->bias, Activation::gelu);  // GELU fused in
  return dropout(c_proj->forward(hidden), dropout_, is_training());
}

Block::Block(const GPTConfig& cfg, Generator* gen) : Module("Block") {
  ln_1 = register_module("ln_1", std::make_shared<nn::LayerNorm>(cfg.n_embd));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(cfg, gen));
  ln_2 = register_module("ln_2", std::make_shared<nn::LayerNorm>(cfg.n_embd));
  mlp = register_module("mlp", std::make_shared<MLP>(cfg, gen));
}

Tensor Block::forward(const Tensor& x) {
  const Tensor y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

Tensor ModuleGroup::forward(const Tensor&) {
  KILN_CHECK(false, type_name(), " has no forward of its own: call the modules it holds");
  return {};
}

// ---------------------------------------------------------------- the model

GPT::GPT(const GPTConfig& cfg, Generator* gen) : Module("GPT"), cfg_(cfg) {
  KILN_CHECK(cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.n_embd >= 1 && cfg.block_size >= 1 && cfg.vocab_size >= 1,
             "GPT: sizes must be positive (n_layer ", cfg.n_layer, ", n_head ", cfg.n_head, ", n_embd ", cfg.n_embd,
             ", block_size ", cfg.block_size, ", vocab_size ", cfg.vocab_size, ")");
  KILN_CHECK(cfg.n_embd % cfg.n_head == 0, "GPT: n_embd ", cfg.n_embd, " is not a multiple of n_head ", cfg.n_head);
  KILN_CHECK(cfg.padded_vocab_size >= cfg.vocab_size, "GPT: padded_vocab_size ", cfg.padded_vocab_size,
             " < vocab_size ", cfg.vocab_size);
  auto transformer = register_module("transformer", std::make_shared<ModuleGroup>("Transformer"));
  wte = transformer->add("wte", std::make_shared<nn::Embedding>(cfg.padded_vocab_size, cfg.n_embd, gen));
  wpe = transformer->add("wpe", std::make_shared<nn::Embedding>(cfg.block_size, cfg.n_embd, gen));
  auto blocks = transformer->add("h", std::make_shared<ModuleGroup>("ModuleList"));
  for (int64_t l = 0; l < cfg.n_layer; ++l)
    h.push_back(blocks->add(std::to_string(l), std::make_shared<Block>(cfg, gen)));
  ln_f = transformer->add("ln_f", std::make_shared<nn::LayerNorm>(cfg.n_embd));

  // GPT-2's init. The residual projections are scaled down by sqrt(2 n_layer), the number of
  // branches adding into the residual stream, so its variance does not grow with depth.
  const double std = 0.02, proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(cfg.n_layer));
  nn::init::normal_(wte->weight, 0.0, std, gen);
  nn::init::normal_(wpe->weight, 0.0, std, gen);
  for (auto& block : h) {
    for (nn::Linear* lin : {block->attn->c_attn.get(), block->attn->c_proj.get(), block->mlp->c_fc.get(),
                            block->mlp->c_proj.get()}) {
      const bool residual_proj = lin == block->attn->c_proj.get() || lin == block->mlp->c_proj.get();
      nn::init::normal_(lin->weight, 0.0, residual_proj ? proj_std : std, gen);
      lin->bias.zero_();
    }
  }
  // Padding rows are never looked up and their logits are outside the loss: keep them 0, as
  // llm.c writes them.
  if (cfg.padded_vocab_size > cfg.vocab_size)
    wte->weight.narrow(0, cfg.vocab_size, cfg.padded_vocab_size - cfg.vocab_size).zero_();
}

Tensor GPT::forward(const Tensor& idx) {
  KILN_CHECK(idx.dim() == 2 && idx.dtype() == DType::i64, "GPT: input ", idx.meta_str(), " is not i64 [B, T]");
  const int64_t T = idx.size(1);
  KILN_CHECK(T >= 1 && T <= cfg_.block_size, "GPT: sequence length ", T, " is outside [1, block_size = ",
             cfg_.block_size, "]");
  const Tensor pos = arange(T, {.dtype = DType::i64, .device = idx.device()});
  const Tensor x = wte->forward(idx) + wpe->forward(pos);  // [B, T, C] + [T, C]
  return blocks_and_head(dropout(x, cfg_.dropout, is_training()), nullptr);
}

Tensor GPT::forward_cached(const Tensor& idx, KVCache& cache) {
  KILN_CHECK(idx.dim() == 2 && idx.dtype() == DType::i64, "GPT: input ", idx.meta_str(), " is not i64 [B, T]");
  const int64_t B = idx.size(0), Tn = idx.size(1), past = cache.length;
  KILN_CHECK(Tn >= 1 && past + Tn <= cfg_.block_size, "GPT: KV cache holds ", past, " positions; ", Tn,
             " more pass block_size = ", cfg_.block_size);
  NoGradGuard no_grad;
  if (cache.k.empty()) {
    const Shape shape = {B, cfg_.n_head, cfg_.block_size, cfg_.n_embd / cfg_.n_head};
    const TensorOptions opts = wte->weight.options();
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
      cache.k.push_back(zeros(shape, opts));
      cache.v.push_back(zeros(shape, opts));
    }
  }
  KILN_CHECK(static_cast<int64_t>(cache.k.size()) == cfg_.n_layer && cache.k[0].size(0) == B,
             "GPT: KV cache was made for ", cache.k.size(), " layers and batch ", cache.k[0].size(0),
             ", not ", cfg_.n_layer, " and ", B);
  const Tensor pos = arange(static_cast<double>(past), static_cast<double>(past + Tn), 1.0,
                            {.dtype = DType::i64, .device = idx.device()});
  const Tensor logits = blocks_and_head(wte->forward(idx) + wpe->forward(pos), &cache);
  cache.length += Tn;
  return logits;
}

// The residual stream through the blocks. Each "add the branch, then LayerNorm" is one fused
// add_layer_norm, as in llm.c: a block's second one normalises with the NEXT block's ln_1 (or
// ln_f after the last block). Same numbers as Block::forward, one pass fewer per LayerNorm.
Tensor GPT::blocks_and_head(const Tensor& x, KVCache* cache) {
  Tensor residual = x;
  Tensor normed = h[0]->ln_1->forward(x);
  for (size_t l = 0; l < h.size(); ++l) {
    Block& block = *h[l];
    const Tensor a = cache ? block.attn->forward_cached(normed, cache->k[l], cache->v[l], cache->length)
                           : block.attn->forward(normed);
    std::tie(residual, normed) = add_layer_norm(residual, a, block.ln_2->weight, block.ln_2->bias, block.ln_2->eps());
    const Tensor m = block.mlp->forward(normed);
    nn::LayerNorm& next = l + 1 < h.size() ? *h[l + 1]->ln_1 : *ln_f;
    std::tie(residual, normed) = add_layer_norm(residual, m, next.weight, next.bias, next.eps());
  }
  return linear(normed, wte->weight);  // lm_head, tied: logits = x wte^T
}

Tensor GPT::loss(const Tensor& logits, const Tensor& targets) const {
  KILN_CHECK(logits.dim() == 3 && logits.size(2) == cfg_.padded_vocab_size, "GPT::loss: logits ",
             logits.meta_str(), " are not [B, T, ", cfg_.padded_vocab_size, "]");
  KILN_CHECK(targets.dim() == 2 && targets.size(0) == logits.size(0) && targets.size(1) == logits.size(1),
             "GPT::loss: targets ", targets.meta_str(), " do not match logits ", logits.meta_str());
  return fused_cross_entropy(logits.reshape({-1, cfg_.padded_vocab_size}), targets.reshape({-1}),
                             cfg_.vocab_size);
}

std::string GPT::extra_repr() const {
  std::ostringstream os;
  os << "n_layer=" << cfg_.n_layer << ", n_head=" << cfg_.n_head << ", n_embd=" << cfg_.n_embd
     << ", block_size=" << cfg_.block_size << ", vocab_size=" << cfg_.vocab_size
     << ", padded_vocab_size=" << cfg_.padded_vocab_size << ", dropout=" << cfg_.dropout;
  return os.str();
}

namespace {

std::shared_ptr<nn::Module> make_gpt(const ModelSpec& spec, Generator* gen) {
  return std::make_shared<GPT>(gpt_config(spec), gen);
}

}  // namespace

KILN_REGISTER_MODEL(gpt, make_gpt);

// ---------------------------------------------------------------- sampling

int64_t sample_token(const Tensor& logits, int64_t vocab_size, double temperature, int64_t top_k, Generator* gen) {
  KILN_CHECK(logits.dim() == 1 && logits.size(0) >= vocab_size && vocab_size >= 1, "sample_token: logits ",
             logits.meta_str(), " do not cover vocab_size ", vocab_size);
  KILN_CHECK(temperature >= 0, "sample_token: temperature must be >= 0, got ", temperature);
  std::vector<double> z = logits.to_vector<double>();
  z.resize(static_cast<size_t>(vocab_size));  // the padded columns take no part
  if (temperature == 0) return std::max_element(z.begin(), z.end()) - z.begin();

  // The candidates: every token, or the top_k largest logits (ties by lower id).
  std::vector<int64_t> ids(z.size());
  std::iota(ids.begin(), ids.end(), 0);
  if (top_k > 0 && top_k < vocab_size) {
    std::partial_sort(ids.begin(), ids.begin() + top_k, ids.end(),
                      [&](int64_t a, int64_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
    ids.resize(top_k);
    std::sort(ids.begin(), ids.end());
  }
  double zmax = -std::numeric_limits<double>::infinity();
  for (int64_t i : ids) zmax = std::max(zmax, z[i]);
  std::vector<double> p(ids.size());
  double total = 0;
  for (size_t i = 0; i < ids.size(); ++i) total += p[i] = std::exp((z[ids[i]] - zmax) / temperature);

  // Inverse CDF on one uniform draw from the generator (Philox: reproducible for a seed).
  const double u = rand({1}, {.dtype = DType::f64}, gen).item() * total;
  double cdf = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    cdf += p[i];
    if (u < cdf) return ids[i];
  }
  return ids.back();  // u rounded to the top of the last bucket
}

std::vector<int64_t> generate(GPT& model, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              double temperature, int64_t top_k, Generator* gen,
                              const std::function<bool(int64_t)>& on_token) {
  const GPTConfig& cfg = model.config();
  KILN_CHECK(!prompt.empty(), "generate: the prompt is empty (start with at least one token, e.g. <|endoftext|>)");
  for (int64_t id : prompt)
    KILN_CHECK(id >= 0 && id < cfg.vocab_size, "generate: prompt token ", id, " is outside the vocabulary [0, ",
               cfg.vocab_size, ")");
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  const Device device = model.wte->weight.device();

  std::vector<int64_t> ids = prompt;
  KVCache cache;
  auto as_batch = [&](const std::vector<int64_t>& v) {
    return from_vector(v, {1, static_cast<int64_t>(v.size())}).to(device);
  };
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    Tensor logits;  // [1, Tn, Vp]
    if (cache.length > 0 && cache.length < cfg.block_size) {
      logits = model.forward_cached(as_batch({ids.back()}), cache);
    } else {
      // The first step, or the cache is full: (re-)encode the last block_size tokens.
      const size_t n = std::min(ids.size(), static_cast<size_t>(cfg.block_size));
      cache.reset();
      logits = model.forward_cached(as_batch(std::vector<int64_t>(ids.end() - n, ids.end())), cache);
    }
    const Tensor last = logits.select(0, 0).select(0, logits.size(1) - 1);
    const int64_t next = sample_token(last, cfg.vocab_size, temperature, top_k, gen);
    ids.push_back(next);
    if (on_token && !on_token(next)) break;
  }
  model.train(was_training);
  return ids;
}

// ---------------------------------------------------------------- Hugging Face GPT-2 weights

nn::NamedTensors gpt_state_dict_from_hf(const nn::NamedTensors& hf, const GPTConfig& cfg) {
  nn::NamedTensors out;
  Tensor wte, lm_head;
  for (const auto& [full_name, tensor] : hf) {
    const std::string name = full_name.rfind("transformer.", 0) == 0 ? full_name.substr(12) : full_name;
    if (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")) continue;  // causal-mask buffers
    if (name == "lm_head.weight") {
      lm_head = tensor;
      continue;
    }
    const bool known = name == "wte.weight" || name == "wpe.weight" || name == "ln_f.weight" || name == "ln_f.bias" ||
                       name.rfind("h.", 0) == 0;
    KILN_CHECK(known, "Hugging Face GPT-2 weights: unexpected tensor '", full_name, "'");
    Tensor t = tensor;
    // Conv1D keeps weights [in, out]; nn.Linear (and kiln) keep [out, in].
    for (const char* conv1d : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
      if (name.ends_with(conv1d)) {
        KILN_CHECK(t.dim() == 2, "Hugging Face GPT-2 weights: '", full_name, "' is ", t.meta_str(), ", not 2-D");
        t = t.t().contiguous();
      }
    }
    if (name == "wte.weight") {
      KILN_CHECK(t.dim() == 2 && t.size(0) == cfg.vocab_size && t.size(1) == cfg.n_embd,
                 "Hugging Face GPT-2 weights: wte.weight is ", t.meta_str(), ", the model wants [", cfg.vocab_size,
                 ", ", cfg.n_embd, "]");
      wte = t;
      if (cfg.padded_vocab_size > cfg.vocab_size)
        t = cat({t, zeros({cfg.padded_vocab_size - cfg.vocab_size, cfg.n_embd}, t.options())}, 0);
    }
    out.emplace_back("transformer." + name, t);
  }
  if (lm_head.defined()) {
    KILN_CHECK(wte.defined() && lm_head.shape() == wte.shape() && max_abs_diff(lm_head, wte) == 0,
               "Hugging Face GPT-2 weights: lm_head.weight differs from wte.weight, but kiln's GPT ties them");
  }
  return out;
}

}  // namespace kiln::models
