#include "optim/registry.h"

#include "core/registry.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace kiln {

namespace {

template <class T>
OptimizerFactory factory_of() {
  return [](std::vector<ParamGroup> groups, const OptimizerOptions& options) {
    return std::unique_ptr<Optimizer>(new T(std::move(groups), options));
  };
}

Registry<OptimizerFactory>& registry() {
  static Registry<OptimizerFactory> r("optimizer");
  static const bool builtins = r.add("sgd", factory_of<SGD>()) && r.add("adam", factory_of<Adam>()) &&
                               r.add("adamw", factory_of<AdamW>());
  (void)builtins;
  return r;
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, std::vector<ParamGroup> groups,
                                          const OptimizerOptions& options) {
  return registry().get(name)(std::move(groups), options);
}

void register_optimizer(const std::string& name, OptimizerFactory factory) {
  KILN_CHECK(!name.empty() && factory, "register_optimizer: needs a name and a factory");
  registry().add(name, std::move(factory));
}

std::vector<std::string> optimizer_names() { return registry().names(); }

}  // namespace kiln
