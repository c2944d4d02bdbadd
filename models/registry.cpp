#include "models/registry.h"

#include "core/registry.h"

namespace kiln::models {

namespace {
Registry<ModelFactory>& registry() {
  static Registry<ModelFactory> r("model");  // constructed on first use: safe from any initialiser
  return r;
}
}  // namespace

bool register_model(const std::string& name, ModelFactory factory) {
  return registry().add(name, std::move(factory));
}

std::vector<std::string> model_names() { return registry().names(); }

std::shared_ptr<nn::Module> make_model(const ModelSpec& spec, Generator* gen) {
  return registry().get(spec.name)(spec, gen);
}

}  // namespace kiln::models
