#include "optim/grad_scaler.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"
#include "optim/optimizer.h"

namespace kiln {

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  KILN_CHECK(options_.init_scale > 0 && std::isfinite(options_.init_scale),
             "GradScaler: init_scale must be finite and > 0, got ", options_.init_scale);
  KILN_CHECK(options_.growth_factor > 1.0, "GradScaler: growth_factor must be > 1, got ",
             options_.growth_factor);
  KILN_CHECK(options_.backoff_factor > 0.0 && options_.backoff_factor < 1.0,
             "GradScaler: backoff_factor must be in (0, 1), got ", options_.backoff_factor);
  KILN_CHECK(options_.growth_interval >= 1, "GradScaler: growth_interval must be >= 1, got ",
             options_.growth_interval);
  state_.scale = options_.init_scale;
}

Tensor GradScaler::scale(const Tensor& loss) const {
  if (!is_enabled()) return loss;
  return mul(loss, state_.scale);
}

void GradScaler::unscale_(Optimizer& optimizer) {
  if (!is_enabled()) return;
  KILN_CHECK(unscaled_ == nullptr, "GradScaler: unscale_() was already called since the last update()");
  NoGradGuard no_grad;
  const double inv_scale = 1.0 / state_.scale;
  Tensor found;
  for (ParamGroup& group : optimizer.param_groups()) {
    for (Tensor& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      g.mul_(inv_scale);
      // x * 0 is 0 for every finite x and NaN for inf or NaN, so this sum is NaN exactly when
      // some element is not finite: one elementwise pass and one reduction per gradient, on
      // the gradient's device, and nothing comes to the host until step().
      Tensor s = sum(mul(g, 0.0)).to(DType::f32);
      if (found.defined() && s.device() != found.device()) s = s.to(found.device());
      found = found.defined() ? add(found, s) : s;
    }
  }
  found_inf_ = found;
  unscaled_ = &optimizer;
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!is_enabled()) {
    optimizer.step();
    return true;
  }
  KILN_CHECK(!stepped_, "GradScaler: step() was already called since the last update()");
  if (unscaled_ == nullptr) unscale_(optimizer);
  KILN_CHECK(unscaled_ == &optimizer, "GradScaler: unscale_() was called for another optimizer");
  found_inf_host_ = found_inf_.defined() && !std::isfinite(found_inf_.item());  // the one sync
  stepped_ = true;
  if (found_inf_host_) {
    ++skipped_steps_;
    return false;
  }
  optimizer.step();
  return true;
}

Tensor GradScaler::found_inf() const {
  KILN_CHECK(unscaled_ != nullptr, "GradScaler: found_inf() needs unscale_() first");
  return found_inf_.defined() ? found_inf_.reshape({1}) : Tensor();
}

void GradScaler::set_found_inf(Tensor found) {
  KILN_CHECK(unscaled_ != nullptr, "GradScaler: set_found_inf() needs unscale_() first");
  KILN_CHECK(!stepped_, "GradScaler: set_found_inf() after step(); call it before");
  KILN_CHECK(!found.defined() || found.numel() == 1, "GradScaler: set_found_inf() takes one element, got ",
             found.meta_str());
  found_inf_ = found;
}

void GradScaler::update() {
  if (!is_enabled()) return;
  KILN_CHECK(stepped_, "GradScaler: update() needs a step() first");
  if (found_inf_host_) {
    state_.scale *= options_.backoff_factor;
    state_.growth_tracker = 0;
  } else if (++state_.growth_tracker >= options_.growth_interval) {
    // PyTorch leaves the scale alone if growing it would overflow f32.
    const double grown = state_.scale * options_.growth_factor;
    if (grown <= 3.4028234663852886e38) state_.scale = grown;
    state_.growth_tracker = 0;
  }
  found_inf_ = Tensor();
  unscaled_ = nullptr;
  stepped_ = found_inf_host_ = false;
}

void GradScaler::load_state(const GradScalerState& state) {
  KILN_CHECK(state.scale > 0 && std::isfinite(state.scale), "GradScaler: loaded scale ", state.scale,
             " is not finite and > 0");
  KILN_CHECK(state.growth_tracker >= 0, "GradScaler: loaded growth_tracker ", state.growth_tracker, " < 0");
  state_ = state;
}

}  // namespace kiln
