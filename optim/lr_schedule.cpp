#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/registry.h"

namespace kiln {

namespace {

void check_step(int64_t step) {
  KILN_CHECK(step >= 0, "lr schedule: step must be >= 0, got ", step);
}

// PyTorch's _annealing_cos: from start (pct 0) to end (pct 1) along half a cosine.
double annealing_cos(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (std::cos(std::numbers::pi * pct) + 1.0);
}

}  // namespace

LRSchedule::LRSchedule(double base_lr) : base_lr_(base_lr) {
  KILN_CHECK(base_lr >= 0.0, "lr schedule: lr must be >= 0, got ", base_lr);
}

ConstantLR::ConstantLR(const LRScheduleOptions& o) : LRSchedule(o.lr) {}

double ConstantLR::lr_at(int64_t step) const {
  check_step(step);
  return base_lr();
}

StepLR::StepLR(const LRScheduleOptions& o)
    : LRSchedule(o.lr), step_size_(o.step_size), gamma_(o.gamma) {
  KILN_CHECK(step_size_ >= 1, "step lr schedule: step_size must be >= 1, got ", step_size_);
  KILN_CHECK(gamma_ > 0.0, "step lr schedule: gamma must be > 0, got ", gamma_);
}

double StepLR::lr_at(int64_t step) const {
  check_step(step);
  return base_lr() * std::pow(gamma_, static_cast<double>(step / step_size_));
}

CosineWithWarmup::CosineWithWarmup(const LRScheduleOptions& o)
    : LRSchedule(o.lr),
      warmup_steps_(o.warmup_steps),
      total_steps_(o.total_steps),
      min_lr_(o.min_lr) {
  KILN_CHECK(total_steps_ >= 1, "cosine lr schedule: total_steps must be >= 1, got ", total_steps_);
  KILN_CHECK(warmup_steps_ >= 0 && warmup_steps_ <= total_steps_,
             "cosine lr schedule: warmup_steps must be in [0, total_steps = ", total_steps_,
             "], got ", warmup_steps_);
  KILN_CHECK(min_lr_ >= 0.0 && min_lr_ <= o.lr,
             "cosine lr schedule: min_lr must be in [0, lr = ", o.lr, "], got ", min_lr_);
}

double CosineWithWarmup::lr_at(int64_t step) const {
  check_step(step);
  if (step < warmup_steps_)
    return base_lr() * static_cast<double>(step + 1) / static_cast<double>(warmup_steps_);
  const int64_t decay_steps = total_steps_ - warmup_steps_;
  const double ratio = decay_steps > 0
                           ? std::min(1.0, static_cast<double>(step - warmup_steps_) / decay_steps)
                           : 1.0;
  return min_lr_ + 0.5 * (1.0 + std::cos(std::numbers::pi * ratio)) * (base_lr() - min_lr_);
}

OneCycleLR::OneCycleLR(const LRScheduleOptions& o) : LRSchedule(o.lr), total_steps_(o.total_steps) {
  KILN_CHECK(total_steps_ >= 1, "onecycle lr schedule: total_steps must be >= 1, got ",
             total_steps_);
  KILN_CHECK(o.pct_start > 0.0 && o.pct_start < 1.0,
             "onecycle lr schedule: pct_start must be in (0, 1), got ", o.pct_start);
  KILN_CHECK(o.div_factor > 0.0, "onecycle lr schedule: div_factor must be > 0, got ",
             o.div_factor);
  KILN_CHECK(o.final_div_factor > 0.0, "onecycle lr schedule: final_div_factor must be > 0, got ",
             o.final_div_factor);
  initial_lr_ = o.lr / o.div_factor;
  min_lr_ = initial_lr_ / o.final_div_factor;
  peak_step_ = o.pct_start * static_cast<double>(total_steps_) - 1.0;  // a float, as in PyTorch
}

double OneCycleLR::lr_at(int64_t step) const {
  check_step(step);
  const double s = static_cast<double>(std::min(step, total_steps_ - 1));
  const double last = static_cast<double>(total_steps_ - 1);
  if (s <= peak_step_) {
    // PyTorch divides by zero here when the peak is step 0; the rise is then already over.
    return peak_step_ > 0.0 ? annealing_cos(initial_lr_, base_lr(), s / peak_step_) : base_lr();
  }
  return last > peak_step_
             ? annealing_cos(base_lr(), min_lr_, (s - peak_step_) / (last - peak_step_))
             : min_lr_;
}

void apply_lr_schedule(Optimizer& optimizer, const LRSchedule& schedule, int64_t step) {
  const double lr = schedule.lr_at(step);
  for (ParamGroup& group : optimizer.param_groups()) {
    // The ratio first: exactly 1 for a group that started at the schedule's base lr.
    const double ratio = schedule.base_lr() > 0.0 ? group.initial_lr / schedule.base_lr() : 1.0;
    group.lr = lr * ratio;
  }
}

// ---------------------------------------------------------------- the registry

namespace {

template <class T>
LRScheduleFactory factory_of() {
  return [](const LRScheduleOptions& o) { return std::unique_ptr<LRSchedule>(new T(o)); };
}

Registry<LRScheduleFactory>& registry() {
  static Registry<LRScheduleFactory> r("lr schedule");
  static const bool builtins = r.add("constant", factory_of<ConstantLR>()) &&
                               r.add("step", factory_of<StepLR>()) &&
                               r.add("cosine", factory_of<CosineWithWarmup>()) &&
                               r.add("onecycle", factory_of<OneCycleLR>());
  (void)builtins;
  return r;
}

}  // namespace

std::unique_ptr<LRSchedule> make_lr_schedule(const std::string& name,
                                             const LRScheduleOptions& options) {
  return registry().get(name)(options);
}

void register_lr_schedule(const std::string& name, LRScheduleFactory factory) {
  KILN_CHECK(!name.empty() && factory, "register_lr_schedule: needs a name and a factory");
  registry().add(name, std::move(factory));
}

std::vector<std::string> lr_schedule_names() { return registry().names(); }

}  // namespace kiln
