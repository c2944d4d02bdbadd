#include "optim/sgd.h"

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

SGD::SGD(std::vector<ParamGroup> groups, const OptimizerOptions& options)
    : Optimizer("sgd", std::move(groups), options.lr, options.weight_decay.value_or(0.0),
                // Plain SGD (momentum 0) keeps no state.
                options.momentum != 0.0 ? std::vector<std::string>{"momentum_buffer"} : std::vector<std::string>{}),
      momentum_(options.momentum),
      dampening_(options.dampening),
      nesterov_(options.nesterov) {
  KILN_CHECK(momentum_ >= 0.0, "sgd: momentum must be >= 0, got ", momentum_);
  KILN_CHECK(!nesterov_ || (momentum_ > 0.0 && dampening_ == 0.0),
             "sgd: nesterov momentum needs momentum > 0 and dampening 0, got momentum ", momentum_,
             " and dampening ", dampening_);
}

void SGD::step() {
  NoGradGuard no_grad;
  for (ParamGroup& group : param_groups()) {
    const double lr = *group.lr, weight_decay = *group.weight_decay;
    for (Tensor& p : group.params) {
      const Tensor g = grad_of(p);
      if (!g.defined()) continue;
      Tensor d = g.detach();
      if (weight_decay != 0.0) d = add(d, p.detach(), weight_decay);
      if (momentum_ != 0.0) {
        ParamState& state = state_of(p);
        auto it = state.find("momentum_buffer");
        Tensor buf;
        if (it == state.end()) {
          buf = d.clone();  // a copy: d may be the gradient itself
          state["momentum_buffer"] = buf;
        } else {
          buf = it->second;
          buf.mul_(momentum_).add_(d, 1.0 - dampening_);
        }
        d = nesterov_ ? add(d, buf, momentum_) : buf;
      }
      p.add_(d, -lr);
    }
  }
}

}  // namespace kiln
