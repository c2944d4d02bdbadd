// Dynamic loss scaling for f16 training, torch.cuda.amp.GradScaler's contract:
//
//   GradScaler scaler;
//   scaler.scale(loss).backward();   // gradients carry the factor scale
//   scaler.unscale_(opt);            // optional: gradients back to true size, e.g. to clip them
//   clip_grad_norm_(params, 1.0);
//   scaler.step(opt);                // opt.step() unless a gradient is inf/NaN; then skipped
//   scaler.update();                 // scale /= 2 after an overflow, *= 2 after 2000 clean steps
//
// f16 gradients of small losses underflow to zero; multiplying the loss by a large factor moves
// them into range, and the factor is divided out of the (f32) gradients before the update.
// unscale_ checks every gradient on its device (no transfer per tensor); step() reads that one
// flag, so a step costs a single host sync. The scale itself stays on the host.
//
// An optimizer sharded across processes (ZeRO-1, dist/zero.h) unscales only its own slice of
// the gradients, so the processes must agree on an overflow before any of them steps:
//
//   scaler.unscale_(shard_optimizer);        // my slice, my flag
//   Tensor f = scaler.found_inf();           // ... summed over the processes (NaN survives a sum)
//   scaler.set_found_inf(f_summed);          // now every process skips or steps together
//   scaler.step(shard_optimizer); scaler.update();   // and the scale changes alike everywhere
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

class Optimizer;

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  // consecutive clean steps before the scale grows
  bool enabled = true;             // disabled: every call is a pass-through (f32/bf16 runs)
};

// What a checkpoint keeps to resume scaling where it stopped.
struct GradScalerState {
  double scale = 65536.0;
  int64_t growth_tracker = 0;  // clean steps since the last change of scale
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  // loss * scale (loss itself when disabled). Differentiable.
  Tensor scale(const Tensor& loss) const;
  // Divides the gradients of `optimizer`'s parameters by the scale in place and records, on
  // the device, whether any is inf or NaN. At most once between update()s.
  void unscale_(Optimizer& optimizer);
  // Unscales if unscale_ was not called, then runs optimizer.step() unless a gradient was
  // inf/NaN. Returns whether the optimizer stepped. Reads the overflow flag (one sync).
  bool step(Optimizer& optimizer);
  // Adjusts the scale from what step() saw: backoff on an overflow (and the clean-step count
  // restarts), growth after growth_interval clean steps in a row.
  void update();

  // Whether unscale_ ran since the last update().
  bool unscaled() const { return unscaled_ != nullptr; }
  // After unscale_: its overflow flag, a one-element f32 tensor on the gradients' device that is
  // NaN when a gradient it checked was inf/NaN and 0 otherwise (undefined: it saw no gradient).
  Tensor found_inf() const;
  // Replaces that flag before step(), e.g. by its sum over the processes that share the step
  // (undefined: no overflow). Needs unscale_ first.
  void set_found_inf(Tensor found);

  double get_scale() const { return is_enabled() ? state_.scale : 1.0; }
  bool is_enabled() const { return options_.enabled; }
  int64_t skipped_steps() const { return skipped_steps_; }  // since construction

  GradScalerState state() const { return state_; }
  void load_state(const GradScalerState& state);

 private:
  GradScalerOptions options_;
  GradScalerState state_;
  // This iteration: the device-side overflow sum (NaN when some gradient is not finite),
  // whether unscale_ ran, and what step() found.
  Tensor found_inf_;
  const Optimizer* unscaled_ = nullptr;
  bool stepped_ = false, found_inf_host_ = false;
  int64_t skipped_steps_ = 0;
};

}  // namespace kiln
