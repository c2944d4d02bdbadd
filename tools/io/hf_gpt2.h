// Hugging Face GPT-2 weights (a model.safetensors from the hub, e.g. openai-community/gpt2)
// into a kiln GPT: `model.init_from: path/to/model.safetensors` in a config.
#pragma once

#include <filesystem>

#include "nn/module.h"

namespace kiln::io {

// Reads `path` (safetensors), maps Hugging Face's names and layout to kiln's
// (models::gpt_state_dict_from_hf) and copies every parameter into `model`, which must be a
// models::GPT of the same sizes (n_head is the model's: the file does not record it). Errors
// name the file and the tensor.
void load_hf_gpt2(const std::filesystem::path& path, nn::Module& model);

}  // namespace kiln::io
