#include "nn/module.h"

#include <map>
#include <sstream>

#include "core/autograd.h"

namespace kiln::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  if (!t.requires_grad()) t.requires_grad_(true);
  params_.emplace_back(name, std::make_unique<Tensor>(std::move(t)));
  return *params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, std::make_unique<Tensor>(std::move(t)));
  return *buffers_.back().second;
}

void Module::collect(const std::string& prefix, NamedTensors& out, bool buffers) const {
  for (const auto& [name, t] : buffers ? buffers_ : params_) out.emplace_back(prefix + name, *t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out, buffers);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out, false);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", out, true);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  NamedTensors buffers = named_buffers();
  out.insert(out.end(), buffers.begin(), buffers.end());
  for (auto& [name, t] : out) t = t.detach();
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : state) given[name] = &t;
  NamedTensors mine = state_dict();
  std::string missing, mismatched;
  for (auto& [name, t] : mine) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing += (missing.empty() ? "" : ", ") + name;
      continue;
    }
    if (it->second->shape() != t.shape()) {
      mismatched += (mismatched.empty() ? "" : "; ") + name + ": checkpoint has " +
                    shape_str(it->second->shape()) + ", model has " + shape_str(t.shape());
    }
    given.erase(it);
  }
  std::string unexpected;
  for (const auto& [name, t] : given) unexpected += (unexpected.empty() ? "" : ", ") + name;
  KILN_CHECK(mismatched.empty(), "load_state_dict: shape mismatch for ", mismatched);
  KILN_CHECK(!strict || (missing.empty() && unexpected.empty()), "load_state_dict: ",
             missing.empty() ? "" : "missing keys: " + missing,
             (!missing.empty() && !unexpected.empty()) ? "; " : "",
             unexpected.empty() ? "" : "unexpected keys: " + unexpected);
  // Everything checked: now copy, so a failed load leaves the model as it was.
  NoGradGuard no_grad;
  for (auto& [name, t] : mine) {
    for (const auto& [n, src] : state)
      if (n == name) {
        t.copy_(src);
        break;
      }
  }
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (Tensor& p : parameters()) p.set_grad(Tensor());
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  for (auto& [name, t] : params_)
    if (t->device() != device) t->set_data(t->to(device));
  for (auto& [name, t] : buffers_)
    if (t->device() != device) t->set_data(t->to(device));
  for (auto& [name, child] : children_) child->to(device);
}

std::string Module::repr(int indent) const {
  std::ostringstream os;
  os << type_name_ << "(" << extra_repr();
  if (!children_.empty()) {
    os << "\n";
    for (const auto& [name, child] : children_)
      os << std::string(indent + 2, ' ') << "(" << name << "): " << child->repr(indent + 2) << "\n";
    os << std::string(indent, ' ');
  }
  os << ")";
  return os.str();
}

}  // namespace kiln::nn
