// The optimizer interface, after torch.optim: parameter groups whose lr and weight_decay
// override the optimizer's defaults, step(), zero_grad(), and per-parameter state that a
// checkpoint can save and restore as named tensors.
//
//   AdamW opt(make_param_groups(model.named_parameters(), 0.1), {.lr = 3e-4});
//   loss.backward();
//   opt.step();
//   opt.zero_grad();
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kiln {

// What each optimizer reads; fields another optimizer does not use are ignored. Defaults are
// PyTorch's.
struct OptimizerOptions {
  double lr = 1e-3;
  // Unset: the optimizer's PyTorch default (0 for SGD and Adam, 1e-2 for AdamW).
  std::optional<double> weight_decay = std::nullopt;
  // sgd
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  // adam, adamw
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// PyTorch's param_groups entry. Unset options take the optimizer's; once the optimizer is
// built every group has both set, and a schedule may change `lr` between steps.
struct ParamGroup {
  std::vector<Tensor> params = {};
  std::optional<double> lr = std::nullopt;
  std::optional<double> weight_decay = std::nullopt;
  double initial_lr = 0.0;  // lr when the optimizer was built: schedules scale from it
};

// One entry of a checkpoint: "state.3.exp_avg", "param_groups.0.lr", ...
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Updates every parameter that has a gradient, in place and without recording autograd
  // history; parameters whose .grad is undefined are skipped, and their state does not move.
  virtual void step() = 0;
  // set_to_none (PyTorch 2's default) frees the gradients; otherwise they are zeroed in place.
  void zero_grad(bool set_to_none = true);

  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  const std::string& name() const { return name_; }

  // The state as PyTorch's state_dict lays it out, one tensor per entry, parameters numbered
  // across groups in order:
  //   state.<i>.<key>          per parameter i that has state; "step" is an i64 scalar on the
  //                            CPU, the other keys (exp_avg, momentum_buffer, ...) tensors
  //                            shaped like the parameter
  //   param_groups.<g>.params  i64 [n]: the indices of group g's parameters
  //   param_groups.<g>.lr, param_groups.<g>.weight_decay   f64 scalars
  // The tensors are the live buffers (no copies): save them before the next step.
  NamedTensors state_tensors() const;
  // Restores what state_tensors() gave, converting buffers to each parameter's dtype and
  // device (the values are copied; nothing aliases `entries`). Replaces all current state.
  // Throws kiln::Error naming the entry on an unknown or malformed name, a missing entry, a
  // shape mismatch, or groups that do not match this optimizer's.
  void load_state_tensors(const NamedTensors& entries);
  // The per-parameter entries a parameter's state holds once the optimizer has updated it, in
  // the order state_tensors() lists them ("step" first when it counts steps).
  const std::vector<std::string>& state_keys() const { return state_keys_; }

 protected:
  // `state_keys`: the per-parameter entries this optimizer keeps ("step" first when it counts
  // steps); a parameter's state has all of them or none.
  Optimizer(std::string name, std::vector<ParamGroup> groups, double default_lr,
            double default_weight_decay, std::vector<std::string> state_keys);

  using ParamState = std::map<std::string, Tensor>;
  // The state of `param` (empty until the optimizer first updates it).
  ParamState& state_of(const Tensor& param) { return state_[param.impl()]; }
  // `param`'s gradient, checked to match it.
  Tensor grad_of(const Tensor& param) const;

 private:
  std::string name_;
  std::vector<ParamGroup> groups_;
  std::vector<std::string> state_keys_;
  std::unordered_map<const TensorImpl*, ParamState> state_;
};

}  // namespace kiln
