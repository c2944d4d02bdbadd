// Models registered by name, so a config says `model.name: lenet` and the runner builds it.
// An unknown name fails with the list of known ones.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace kiln {
class Generator;
}

namespace kiln::models {

// Everything a model may read from the config's model section, plus the input geometry.
struct ModelSpec {
  std::string name = "mlp";
  std::vector<int64_t> hidden_sizes = {512, 512};
  std::string activation = "relu";
  double dropout = 0.0;
  int64_t num_classes = 10;
  std::vector<int64_t> channels = {32, 64, 128};
  int64_t blocks_per_stage = 2;
  int64_t in_channels = 1, height = 28, width = 28;

  // gpt (models/gpt.h). `preset` names a size ("gpt2-124M", "gpt2-medium", "gpt-char-tiny",
  // ...; see gpt_preset_names()); each size field below that is 0 takes the preset's value and
  // a nonzero one overrides it. Without a preset every size must be given. `dropout` above is
  // GPT-2's single dropout probability (embeddings, attention, residual branches).
  std::string preset;
  int64_t n_layer = 0, n_head = 0, n_embd = 0, block_size = 0, vocab_size = 0;
  int64_t padded_vocab_size = 0;  // 0: vocab_size rounded up to a multiple of 128 (llm.c)
  std::string attention = "naive";  // scaled_dot_product_attention backend: naive, flash, batched
};

using ModelFactory = std::function<std::shared_ptr<nn::Module>(const ModelSpec&, Generator*)>;

// Throws when `name` is taken; returns true, for KILN_REGISTER_MODEL.
bool register_model(const std::string& name, ModelFactory factory);
std::shared_ptr<nn::Module> make_model(const ModelSpec& spec, Generator* gen = nullptr);
std::vector<std::string> model_names();  // sorted

}  // namespace kiln::models

// KILN_REGISTER_MODEL(mlp, make_mlp) at namespace scope in the model's file.
#define KILN_REGISTER_MODEL(name, factory) \
  [[maybe_unused]] static const bool kiln_model_registered_##name = ::kiln::models::register_model(#name, factory)
