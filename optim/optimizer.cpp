// Optimizer: parameter groups, zero_grad, and the checkpoint form of the state.
#include "optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string index_list(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

// A non-negative decimal index, or -1 when `s` is not one.
int64_t parse_index(const std::string& s) {
  if (s.empty() || s.size() > 15 || !std::all_of(s.begin(), s.end(), ::isdigit)) return -1;
  return std::stoll(s);
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream is(s);
  while (std::getline(is, part, '.')) parts.push_back(part);
  if (!s.empty() && s.back() == '.') parts.push_back("");
  return parts;
}

const char* const kGroupFields[] = {"params", "lr", "weight_decay"};

}  // namespace

Optimizer::Optimizer(std::string name, std::vector<ParamGroup> groups, double default_lr,
                     double default_weight_decay, std::vector<std::string> state_keys)
    : name_(std::move(name)), groups_(std::move(groups)), state_keys_(std::move(state_keys)) {
  std::set<const TensorImpl*> seen;
  size_t total = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    ParamGroup& group = groups_[g];
    if (!group.lr) group.lr = default_lr;
    if (!group.weight_decay) group.weight_decay = default_weight_decay;
    KILN_CHECK(*group.lr >= 0.0, name_, ": param group ", g, ": lr must be >= 0, got ", *group.lr);
    KILN_CHECK(*group.weight_decay >= 0.0, name_, ": param group ", g,
               ": weight_decay must be >= 0, got ", *group.weight_decay);
    group.initial_lr = *group.lr;
    for (size_t j = 0; j < group.params.size(); ++j) {
      const Tensor& p = group.params[j];
      KILN_CHECK(p.defined(), name_, ": param group ", g, ", parameter ", j, " is undefined");
      KILN_CHECK(is_floating(p.dtype()), name_, ": param group ", g, ", parameter ", j,
                 " must be a floating tensor, got ", p.meta_str());
      KILN_CHECK(p.is_leaf(), name_, ": param group ", g, ", parameter ", j,
                 " is not a leaf tensor (", p.meta_str(), "); optimize the leaf it came from");
      KILN_CHECK(seen.insert(p.impl()).second, name_, ": param group ", g, ", parameter ", j, " (",
                 p.meta_str(), ") appears more than once in the parameter groups");
    }
    total += group.params.size();
  }
  KILN_CHECK(total > 0, name_, ": got an empty parameter list");
}

Tensor Optimizer::grad_of(const Tensor& param) const {
  Tensor g = param.grad();
  if (g.defined())
    KILN_CHECK(
        g.shape() == param.shape() && g.dtype() == param.dtype() && g.device() == param.device(),
        name_, ": gradient ", g.meta_str(), " does not match its parameter ", param.meta_str());
  return g;
}

void Optimizer::zero_grad(bool set_to_none) {
  for (ParamGroup& group : groups_) {
    for (Tensor& p : group.params) {
      if (set_to_none) {
        if (p.grad().defined()) p.set_grad(Tensor());
      } else if (p.grad().defined()) {
        p.mutable_grad().zero_();
      }
    }
  }
}

NamedTensors Optimizer::state_tensors() const {
  NamedTensors out;
  int64_t index = 0;
  std::vector<std::vector<int64_t>> group_indices;
  for (const ParamGroup& group : groups_) {
    group_indices.emplace_back();
    for (const Tensor& p : group.params) {
      group_indices.back().push_back(index);
      auto it = state_.find(p.impl());
      if (it != state_.end()) {
        for (const std::string& key : state_keys_) {
          auto entry = it->second.find(key);
          if (entry != it->second.end())
            out.emplace_back("state." + std::to_string(index) + "." + key, entry->second);
        }
      }
      ++index;
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    const std::string prefix = "param_groups." + std::to_string(g) + ".";
    out.emplace_back(
        prefix + "params",
        from_vector(group_indices[g], {static_cast<int64_t>(group_indices[g].size())}));
    out.emplace_back(prefix + "lr", scalar_tensor(*groups_[g].lr, {.dtype = DType::f64}));
    out.emplace_back(prefix + "weight_decay",
                     scalar_tensor(*groups_[g].weight_decay, {.dtype = DType::f64}));
  }
  return out;
}

void Optimizer::load_state_tensors(const NamedTensors& entries) {
  NoGradGuard no_grad;
  std::vector<Tensor> params;  // by index across groups
  std::vector<std::vector<int64_t>> group_indices;
  for (const ParamGroup& group : groups_) {
    group_indices.emplace_back();
    for (const Tensor& p : group.params) {
      group_indices.back().push_back(static_cast<int64_t>(params.size()));
      params.push_back(p);
    }
  }
  const std::string known =
      "state.<i>.{" + join(state_keys_) + "}, param_groups.<g>.{params, lr, weight_decay}";

  // Sort every entry into its place, checking names and shapes; nothing changes until all
  // entries have passed.
  std::map<int64_t, std::map<std::string, Tensor>> loaded_state;
  std::map<int64_t, std::map<std::string, Tensor>> loaded_groups;
  std::set<std::string> names;
  for (const auto& [name, tensor] : entries) {
    KILN_CHECK(names.insert(name).second, name_, ": state entry '", name, "' appears twice");
    KILN_CHECK(tensor.defined(), name_, ": state entry '", name, "' is an undefined tensor");
    const std::vector<std::string> parts = split_dots(name);
    const bool is_state = parts.size() == 3 && parts[0] == "state";
    const bool is_group = parts.size() == 3 && parts[0] == "param_groups";
    const int64_t index = parts.size() == 3 ? parse_index(parts[1]) : -1;
    KILN_CHECK((is_state || is_group) && index >= 0, name_, ": unknown state entry '", name,
               "' (known: ", known, ")");
    if (is_state) {
      KILN_CHECK(std::find(state_keys_.begin(), state_keys_.end(), parts[2]) != state_keys_.end(),
                 name_, ": unknown state entry '", name, "' (", name_, " keeps ", join(state_keys_),
                 " per parameter)");
      KILN_CHECK(index < static_cast<int64_t>(params.size()), name_, ": state entry '", name,
                 "' is for parameter ", index, " but this optimizer has ", params.size(),
                 " parameters");
      const Tensor& p = params[index];
      if (parts[2] == "step") {
        KILN_CHECK(tensor.numel() == 1, name_, ": state entry '", name,
                   "' must hold one step count, got ", tensor.meta_str());
        const double steps = tensor.item();
        KILN_CHECK(steps >= 0 && steps == std::floor(steps), name_, ": state entry '", name,
                   "' must be a whole number of steps, got ", steps);
      } else {
        KILN_CHECK(tensor.shape() == p.shape(), name_, ": state entry '", name, "' has shape ",
                   shape_str(tensor.shape()), " but parameter ", index, " is ", p.meta_str());
      }
      loaded_state[index][parts[2]] = tensor;
    } else {
      KILN_CHECK(std::find(std::begin(kGroupFields), std::end(kGroupFields), parts[2]) !=
                     std::end(kGroupFields),
                 name_, ": unknown state entry '", name, "' (known: ", known, ")");
      KILN_CHECK(index < static_cast<int64_t>(groups_.size()), name_, ": state entry '", name,
                 "' is for param group ", index, " but this optimizer has ", groups_.size(),
                 " groups");
      if (parts[2] == "params") {
        const std::vector<int64_t> got = tensor.to(kCPU).to(DType::i64).to_vector<int64_t>();
        KILN_CHECK(tensor.dim() == 1 && got == group_indices[index], name_, ": state entry '", name,
                   "' lists parameters ", index_list(got), " but param group ", index,
                   " of this optimizer holds ", index_list(group_indices[index]),
                   " (the checkpoint was saved for other parameter groups)");
      } else {
        KILN_CHECK(tensor.numel() == 1, name_, ": state entry '", name, "' must be a scalar, got ",
                   tensor.meta_str());
        KILN_CHECK(tensor.item() >= 0, name_, ": state entry '", name, "' must be >= 0, got ",
                   tensor.item());
      }
      loaded_groups[index][parts[2]] = tensor;
    }
  }
  for (const auto& [index, state] : loaded_state)
    for (const std::string& key : state_keys_)
      KILN_CHECK(state.count(key), name_, ": state entry 'state.", index, ".", key,
                 "' is missing (parameter ", index, " has ", state.begin()->first,
                 "; its state needs ", join(state_keys_), ")");
  for (size_t g = 0; g < groups_.size(); ++g)
    for (const char* field : kGroupFields)
      KILN_CHECK(loaded_groups[static_cast<int64_t>(g)].count(field), name_,
                 ": state entry 'param_groups.", g, ".", field, "' is missing");

  // Commit: fresh copies in each parameter's dtype and on its device (steps as CPU i64).
  state_.clear();
  for (const auto& [index, state] : loaded_state) {
    const Tensor& p = params[index];
    ParamState& dst = state_[p.impl()];
    for (const auto& [key, t] : state) {
      if (key == "step") {
        dst[key] = zeros({}, {.dtype = DType::i64});
        dst[key].fill_(t.item());
      } else {
        dst[key] = Tensor::empty(p.shape(), p.options());
        dst[key].copy_(t);
      }
    }
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    std::map<std::string, Tensor>& fields = loaded_groups[static_cast<int64_t>(g)];
    groups_[g].lr = fields["lr"].item();
    groups_[g].weight_decay = fields["weight_decay"].item();
  }
}

}  // namespace kiln
