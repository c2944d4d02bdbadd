#include "optim/registry.h"

#include <map>
#include <mutex>

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

struct Registry {
  std::mutex mu;
  std::map<std::string, OptimizerFactory> factories = {
      {"sgd", factory_of<SGD>()}, {"adam", factory_of<Adam>()}, {"adamw", factory_of<AdamW>()}};
};

Registry& registry() {
  static Registry r;
  return r;
}

std::string known_names(const std::map<std::string, OptimizerFactory>& factories) {
  std::string out;
  for (const auto& [name, f] : factories) out += (out.empty() ? "" : ", ") + name;
  return out;
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, std::vector<ParamGroup> groups,
                                          const OptimizerOptions& options) {
  OptimizerFactory factory;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(name);
    KILN_CHECK(it != r.factories.end(), "unknown optimizer '", name,
               "' (known: ", known_names(r.factories), ")");
    factory = it->second;
  }
  return factory(std::move(groups), options);
}

void register_optimizer(const std::string& name, OptimizerFactory factory) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  KILN_CHECK(!name.empty() && factory, "register_optimizer: needs a name and a factory");
  KILN_CHECK(r.factories.emplace(name, std::move(factory)).second, "register_optimizer: '", name,
             "' is already registered (known: ", known_names(r.factories), ")");
}

std::vector<std::string> optimizer_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

}  // namespace kiln
