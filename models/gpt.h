// GPT-2 (Radford et al. 2019) as nanoGPT's model.py and llm.c's train_gpt2 write it: token and
// learned position embeddings, n_layer pre-LN blocks (causal self-attention, then a 4x MLP with
// GELU, each added back to the residual stream), a final LayerNorm and an lm_head tied to the
// token embedding. Parameter names are Hugging Face's and nanoGPT's (transformer.wte.weight,
// transformer.h.0.attn.c_attn.weight, ..., transformer.ln_f.bias), so their state dicts map
// one to one (Hugging Face's Conv1D weights transposed; gpt_state_dict_from_hf does it).
//
// The vocabulary is padded (llm.c: 50257 -> 50304) so the lm_head matmul has friendly sizes;
// the logits carry the padded columns, and the loss (GPT::loss) and sampling only look at the
// first vocab_size of them. Registered as model "gpt" (models/registry.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "models/registry.h"
#include "nn/embedding.h"
#include "nn/layernorm.h"
#include "nn/linear.h"
#include "nn/module.h"

namespace kiln {
class Generator;
}

namespace kiln::models {

struct GPTConfig {
  int64_t block_size = 1024;  // the longest sequence (rows of wpe)
  int64_t vocab_size = 50257;
  int64_t padded_vocab_size = 50304;  // rows of wte and columns of the logits
  int64_t n_layer = 12, n_head = 12, n_embd = 768;
  double dropout = 0.0;  // embeddings, attention probabilities and both residual branches
  AttentionBackend attention = AttentionBackend::naive;
};

// vocab_size rounded up to a multiple of 128, llm.c's rule (50257 -> 50304).
int64_t padded_vocab_size(int64_t vocab_size);
// Sizes by name: "gpt2-124M", "gpt2-medium", "gpt2-large", "gpt2-xl" (the released GPT-2
// models), "gpt2-mini" (6 layers, 384 wide, block 256, GPT-2 vocab) and "gpt-char-tiny"
// (4 layers, 128 wide, 4 heads, block 128, 256 byte-level tokens) for CPU runs. An unknown
// name fails with the list.
GPTConfig gpt_preset(const std::string& name);
std::vector<std::string> gpt_preset_names();
// The config a ModelSpec asks for: its preset, then its nonzero size fields, its dropout and
// attention backend. Errors name the ModelSpec field (model.<field> in a config).
GPTConfig gpt_config(const ModelSpec& spec);
// Parameters of a GPT of this config (wte counted once: lm_head is tied), without building it.
int64_t gpt_num_parameters(const GPTConfig& cfg);

// Keys and values of every layer for incremental decoding (generation): per layer k[l], v[l]
// [B, n_head, block_size, head_dim], of which the first `length` positions are filled.
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t length = 0;
  void reset() {
    k.clear();
    v.clear();
    length = 0;
  }
};

// Multi-head causal self-attention with one fused q, k, v projection (c_attn: C -> 3C) and an
// output projection (c_proj: C -> C), as GPT-2's.
class CausalSelfAttention : public nn::Module {
 public:
  CausalSelfAttention(const GPTConfig& cfg, Generator* gen);
  Tensor forward(const Tensor& x) override;  // [B, T, C] -> [B, T, C]
  // x [B, Tn, C] at positions past..past+Tn-1: writes its keys and values into the caches
  // ([B, H, block_size, D]) at those positions and attends to positions 0..past+Tn-1, causally
  // within the chunk. No dropout: this is the inference path.
  Tensor forward_cached(const Tensor& x, Tensor& k_cache, Tensor& v_cache, int64_t past);

  std::shared_ptr<nn::Linear> c_attn, c_proj;

 private:
  // softmax(q k^T / sqrt(D) + mask) v where query i (at position past + i) sees keys 0..past+i.
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, int64_t past, bool train_dropout);
  int64_t n_head_, n_embd_;
  double dropout_;
  AttentionBackend backend_;
};

// c_fc (C -> 4C), GELU (tanh approximation), c_proj (4C -> C).
class MLP : public nn::Module {
 public:
  MLP(const GPTConfig& cfg, Generator* gen);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::Linear> c_fc, c_proj;

 private:
  double dropout_;
};

// x + attn(ln_1(x)), then x + mlp(ln_2(x)).
class Block : public nn::Module {
 public:
  Block(const GPTConfig& cfg, Generator* gen);
  Tensor forward(const Tensor& x) override;
  std::shared_ptr<nn::LayerNorm> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<MLP> mlp;
};

// A named group of modules without a forward of its own (torch.nn.ModuleDict / ModuleList):
// it gives GPT's parameters the "transformer." and "transformer.h.<i>." prefixes.
class ModuleGroup : public nn::Module {
 public:
  explicit ModuleGroup(std::string type_name) : Module(std::move(type_name)) {}
  template <class M>
  std::shared_ptr<M> add(const std::string& name, std::shared_ptr<M> m) {
    return register_module(name, std::move(m));
  }
  Tensor forward(const Tensor& x) override;  // throws: call the modules it holds
};

class GPT : public nn::Module {
 public:
  // GPT-2 initialisation: weights N(0, 0.02), residual projections (c_proj) N(0, 0.02 /
  // sqrt(2 n_layer)), biases 0, LayerNorms 1 and 0; wte's padding rows are 0.
  explicit GPT(const GPTConfig& cfg, Generator* gen = nullptr);

  // idx [B, T] (i64, T <= block_size) -> logits [B, T, padded_vocab_size].
  Tensor forward(const Tensor& idx) override;
  // The same logits for idx [B, Tn] continuing the sequence held by `cache` (positions
  // cache.length ..), appending its keys and values; with an empty cache idx is the prompt.
  // Inference only (runs without autograd). Fails when the sequence would pass block_size.
  Tensor forward_cached(const Tensor& idx, KVCache& cache);
  // Mean cross-entropy of logits [B, T, padded_vocab] against targets [B, T] over the real
  // vocabulary (padded columns excluded), as llm.c's fused classifier.
  Tensor loss(const Tensor& logits, const Tensor& targets) const;

  const GPTConfig& config() const { return cfg_; }
  std::string extra_repr() const override;

  // Handles to the parts, for readable code; the module tree names them transformer.wte, ...
  std::shared_ptr<nn::Embedding> wte, wpe;
  std::vector<std::shared_ptr<Block>> h;
  std::shared_ptr<nn::LayerNorm> ln_f;

 private:
  // Embedded tokens x [B, T, C] through the blocks, ln_f and the tied lm_head.
  Tensor blocks_and_head(const Tensor& x, KVCache* cache);
  GPTConfig cfg_;
};

// ---- sampling
// The next token from logits [padded_vocab] (only the first vocab_size count): temperature 0
// is greedy (argmax, the first on ties); otherwise a draw from softmax(logits / temperature)
// restricted to the top_k largest (top_k <= 0: all), using `gen` (or the default generator).
int64_t sample_token(const Tensor& logits, int64_t vocab_size, double temperature, int64_t top_k,
                     Generator* gen = nullptr);

// Continues `prompt` by max_new_tokens sampled tokens, as nanoGPT's generate() but with a KV
// cache; once the sequence is longer than block_size the context is its last block_size tokens
// (re-encoded each step, as nanoGPT crops). Runs in eval mode without autograd and restores
// the model's mode. `on_token` (optional) sees each new token as it is chosen (for streaming);
// returning false stops early. Returns the prompt followed by the new tokens.
std::vector<int64_t> generate(GPT& model, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                              double temperature, int64_t top_k, Generator* gen = nullptr,
                              const std::function<bool(int64_t)>& on_token = {});

// ---- Hugging Face GPT-2 weights
// Maps a Hugging Face GPT-2 state dict (GPT2Model names like "h.0.attn.c_attn.weight", or
// GPT2LMHeadModel's "transformer.h.0...") to kiln's names for a model of `cfg`: Conv1D weights
// (c_attn, c_proj, c_fc; stored [in, out]) are transposed, the attn.bias / attn.masked_bias
// causal-mask buffers are skipped, lm_head.weight must equal wte (tied), and wte is padded
// with zero rows to padded_vocab_size. Unknown names and wrong shapes fail naming the tensor.
nn::NamedTensors gpt_state_dict_from_hf(const nn::NamedTensors& hf, const GPTConfig& cfg);

}  // namespace kiln::models
