#include "tools/io/hf_gpt2.h"

#include "core/error.h"
#include "models/gpt.h"
#include "tools/io/safetensors.h"

namespace kiln::io {

void load_hf_gpt2(const std::filesystem::path& path, nn::Module& model) {
  auto* gpt = dynamic_cast<models::GPT*>(&model);
  KILN_CHECK(gpt, "load_hf_gpt2: ", path.string(), " holds GPT-2 weights, but the model is a ", model.type_name(),
             " (set model.name: gpt)");
  const SafetensorsContents file = load_safetensors(path);
  try {
    model.load_state_dict(models::gpt_state_dict_from_hf(file.tensors, gpt->config()));
  } catch (const Error& e) {
    KILN_CHECK(false, "loading Hugging Face GPT-2 weights from ", path.string(), ": ", e.what());
  }
}

}  // namespace kiln::io
