// Learning-rate schedules as pure functions of the step (0 for the first optimizer step), so
// a resumed run needs only its step count. Registered by name for configs: "constant",
// "step", "cosine", "onecycle".
//
//   auto schedule = make_lr_schedule("cosine", {.lr = 6e-4, .total_steps = 5000,
//                                               .warmup_steps = 700, .min_lr = 6e-5});
//   for (int64_t step = 0; step < 5000; ++step) {
//     apply_lr_schedule(opt, *schedule, step);
//     ...; opt.step();
//   }
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace kiln {

// Every schedule's options; each reads the ones its comment names. Defaults are PyTorch's.
struct LRScheduleOptions {
  double lr = 1e-3;               // all: the base lr (the peak of cosine; max_lr of onecycle)
  int64_t total_steps = 0;        // cosine, onecycle: the length of the run
  int64_t warmup_steps = 0;       // cosine
  double min_lr = 0.0;            // cosine: the lr at the end
  int64_t step_size = 1;          // step: steps between decays
  double gamma = 0.1;             // step: the decay factor
  double pct_start = 0.3;         // onecycle: share of the run spent rising to max_lr
  double div_factor = 25.0;       // onecycle: starts at max_lr / div_factor
  double final_div_factor = 1e4;  // onecycle: ends at max_lr / div_factor / final_div_factor
};

class LRSchedule {
 public:
  explicit LRSchedule(double base_lr);
  virtual ~LRSchedule() = default;
  // The lr for optimizer step `step` (>= 0).
  virtual double lr_at(int64_t step) const = 0;
  double base_lr() const { return base_lr_; }

 private:
  double base_lr_;
};

// lr at every step.
class ConstantLR : public LRSchedule {
 public:
  explicit ConstantLR(const LRScheduleOptions& o);
  double lr_at(int64_t step) const override;
};

// torch.optim.lr_scheduler.StepLR: lr * gamma^floor(step / step_size).
class StepLR : public LRSchedule {
 public:
  explicit StepLR(const LRScheduleOptions& o);
  double lr_at(int64_t step) const override;

 private:
  int64_t step_size_;
  double gamma_;
};

// llm.c / nanoGPT: linear warmup lr * (step + 1) / warmup_steps, then half a cosine from lr
// down to min_lr, reached at total_steps and kept after.
class CosineWithWarmup : public LRSchedule {
 public:
  explicit CosineWithWarmup(const LRScheduleOptions& o);
  double lr_at(int64_t step) const override;

 private:
  int64_t warmup_steps_, total_steps_;
  double min_lr_;
};

// torch.optim.lr_scheduler.OneCycleLR with its defaults (two phases, cosine annealing): from
// max_lr / div_factor up to max_lr at step pct_start * total_steps - 1, then down to
// max_lr / div_factor / final_div_factor at step total_steps - 1. Later steps keep the final
// lr (PyTorch raises past total_steps).
class OneCycleLR : public LRSchedule {
 public:
  explicit OneCycleLR(const LRScheduleOptions& o);
  double lr_at(int64_t step) const override;

 private:
  int64_t total_steps_;
  double initial_lr_, min_lr_, peak_step_;
};

// Sets every group's lr to schedule.lr_at(step) scaled by the group's initial_lr relative to
// the schedule's base lr, so groups built with other lrs keep their ratio (PyTorch's
// schedulers scale each group's own base lr the same way).
void apply_lr_schedule(Optimizer& optimizer, const LRSchedule& schedule, int64_t step);

using LRScheduleFactory = std::function<std::unique_ptr<LRSchedule>(const LRScheduleOptions&)>;
std::unique_ptr<LRSchedule> make_lr_schedule(const std::string& name,
                                             const LRScheduleOptions& options = {});
// Throws when `name` is taken.
void register_lr_schedule(const std::string& name, LRScheduleFactory factory);
std::vector<std::string> lr_schedule_names();  // sorted

}  // namespace kiln
