#include "models/registry.h"

#include <map>

#include "core/error.h"

namespace kiln::models {

namespace {
std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> r;  // constructed on first use: safe from any initialiser
  return r;
}
}  // namespace

bool register_model(const std::string& name, ModelFactory factory) {
  registry()[name] = std::move(factory);
  return true;
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& [name, f] : registry()) names.push_back(name);
  return names;
}

std::shared_ptr<nn::Module> make_model(const ModelSpec& spec, Generator* gen) {
  auto it = registry().find(spec.name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    KILN_FAIL("unknown model: ", spec.name, " (known models: ", known, ")");
  }
  return it->second(spec, gen);
}

}  // namespace kiln::models
