#include "optim/adam.h"

#include <map>
#include <tuple>

#include "core/autograd.h"
#include "core/ops.h"
#include "optim/fused_step.h"

namespace kiln {

Adam::Adam(std::vector<ParamGroup> groups, const OptimizerOptions& options)
    : Adam("adam", std::move(groups), options, 0.0, /*decoupled=*/false) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const OptimizerOptions& options)
    : Adam("adamw", std::move(groups), options, 1e-2, /*decoupled=*/true) {}

Adam::Adam(const char* name, std::vector<ParamGroup> groups, const OptimizerOptions& options,
           double default_weight_decay, bool decoupled)
    : Optimizer(name, std::move(groups), options.lr,
                options.weight_decay.value_or(default_weight_decay),
                {"step", "exp_avg", "exp_avg_sq"}),
      beta1_(options.beta1),
      beta2_(options.beta2),
      eps_(options.eps),
      decoupled_(decoupled) {
  KILN_CHECK(beta1_ >= 0.0 && beta1_ < 1.0, name, ": beta1 must be in [0, 1), got ", beta1_);
  KILN_CHECK(beta2_ >= 0.0 && beta2_ < 1.0, name, ": beta2 must be in [0, 1), got ", beta2_);
  KILN_CHECK(eps_ >= 0.0, name, ": eps must be >= 0, got ", eps_);
  for (const ParamGroup& group : param_groups())
    for (const Tensor& p : group.params)
      KILN_CHECK(p.dtype() == DType::f32 || p.dtype() == DType::f64, name,
                 ": parameters must be f32 or f64, got ", p.meta_str());
}

void Adam::step() {
  NoGradGuard no_grad;
  // Parameters that can share one fused call: same device, dtype and step count. Steps
  // differ only when some parameter missed a step for lack of a gradient, as in PyTorch.
  using BucketKey = std::tuple<int, int, int, int64_t>;
  struct Bucket {
    std::vector<Tensor> params, grads, exp_avgs, exp_avg_sqs;
  };
  for (ParamGroup& group : param_groups()) {
    std::map<BucketKey, Bucket> buckets;
    for (Tensor& p : group.params) {
      const Tensor g = grad_of(p);
      if (!g.defined()) continue;
      ParamState& state = state_of(p);
      if (state.empty()) {
        state["step"] = zeros({}, {.dtype = DType::i64});
        state["exp_avg"] = zeros_like(p);
        state["exp_avg_sq"] = zeros_like(p);
      }
      Tensor& step_count = state["step"];
      const int64_t step = step_count.item<int64_t>() + 1;  // a CPU scalar: no device sync
      step_count.fill_(static_cast<double>(step));
      const Device d = p.device();
      Bucket& b = buckets[{static_cast<int>(d.type), d.index, static_cast<int>(p.dtype()), step}];
      b.params.push_back(p);
      b.grads.push_back(g);
      b.exp_avgs.push_back(state["exp_avg"]);
      b.exp_avg_sqs.push_back(state["exp_avg_sq"]);
    }
    const AdamHyperParams h{*group.lr, beta1_, beta2_, eps_, *group.weight_decay, decoupled_};
    for (auto& [key, b] : buckets)
      fused_adam_update(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, h, std::get<3>(key));
  }
}

}  // namespace kiln
