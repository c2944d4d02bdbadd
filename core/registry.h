// Things registered by name, as configs name them (Caffe's layer registry): models,
// optimizers, lr schedules, datasets. An unknown name fails with the sorted list of known
// ones, "unknown model: X (known: a, b)"; a name registered twice is an error.
//
//   Registry<ModelFactory>& models() {
//     static Registry<ModelFactory> r("model");  // function-local: safe from static initialisers
//     return r;
//   }
//   models().add("mlp", make_mlp);
//   models().get("mlp")(spec, gen);
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace kiln {

template <class Factory>
class Registry {
 public:
  // `what` names one entry in error messages: "model", "lr schedule".
  explicit Registry(std::string what) : what_(std::move(what)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Returns true, so a registration can initialise a static at namespace scope.
  bool add(const std::string& name, Factory f) {
    std::lock_guard<std::mutex> lock(mu_);
    KILN_CHECK(!name.empty(), what_, " registry: a name is needed");
    KILN_CHECK(entries_.emplace(name, std::move(f)).second, what_, " already registered: ", name,
               " (known: ", known_locked(), ")");
    return true;
  }

  // Entries are never removed, so the reference stays valid after the lock is released.
  const Factory& get(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) KILN_FAIL("unknown ", what_, ": ", name, " (known: ", known_locked(), ")");
    return it->second;
  }

  std::vector<std::string> names() const {  // sorted
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (const auto& [name, f] : entries_) out.push_back(name);
    return out;
  }

 private:
  std::string known_locked() const {
    std::string out;
    for (const auto& [name, f] : entries_) out += (out.empty() ? "" : ", ") + name;
    return out;
  }

  std::string what_;
  mutable std::mutex mu_;
  std::map<std::string, Factory> entries_;
};

}  // namespace kiln
