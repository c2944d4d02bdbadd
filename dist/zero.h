// ZeRO stage 1 (optimizer state sharding), as llm.c does it: every rank keeps the whole model
// and computes full gradients, but owns the optimizer state (AdamW's moments, an f32 master
// copy of the weights) of only one 1/world_size slice of the flattened parameters.
//
//   after backward:  reduce_gradients()  flat gradients -> reduce_scatter(avg) -> my slice
//   (optional)       clip_grad_norm(max) global norm from the slices (one all_reduce)
//   step():          the ordinary optimizer updates my slice of the f32 master weights with
//                    my slice of the state, then all_gather sends every slice to every rank
//                    and the parameters are overwritten from it.
//
// The update is elementwise, so it is the same step an unsharded optimizer takes. The sharded
// optimizer is a plain kiln Optimizer (make_optimizer) whose "parameters" are the pieces of
// this rank's slice, one per model parameter it overlaps, grouped like the model's parameter
// groups: schedules set lr on shard_optimizer() as on any optimizer.
//
// Unused parameters, as with DDP (dist/used_flags.h): a parameter whose .grad is undefined on
// every rank at reduce_gradients() keeps its weights, moments and step count, as an unsharded
// optimizer skips a parameter without a gradient. Each rank's flags ride in the spare tail of
// every rank's chunk of the reduce-scatter (so each rank learns all of them): no extra collective.
// A parameter with a gradient on some ranks gets the average with zeros from the others.
//
// f16 with a loss scaler (optim/grad_scaler.h), as torch's ShardedGradScaler does: after the
// reduce-scatter each rank unscales and checks only its own gradient slice (unscale_), and the
// ranks sum their overflow flags, so every rank skips or steps together and the scaler's update()
// changes the scale alike everywhere: the step one process with the scaler takes on the global
// batch. The flags ride clip_grad_norm()'s all-reduce when it runs between unscale_ and step;
// otherwise step(scaler) sums them with one all-reduce of a single element (no earlier collective
// can carry them: the flag exists only after the reduce-scatter, and the all-gather comes after
// the decision it must inform).
//
// Checkpoints use the unsharded layout (state_tensors()/load_state_tensors() of the model's
// optimizer: state.<i>.exp_avg shaped like parameter i), gathered to every rank on save, so a
// checkpoint resumes with any world size, with or without ZeRO.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/used_flags.h"
#include "optim/optimizer.h"

namespace kiln {
class GradScaler;
}

namespace kiln::dist {

class ZeroRedundancyOptimizer {
 public:
  // `full`: the optimizer an unsharded run would use (its groups, resolved lr and
  // weight_decay, and name); it keeps the parameter handles but is never stepped, so it holds
  // no state. `options`: the hyper-parameters for the sharded one (betas, eps, momentum).
  ZeroRedundancyOptimizer(const Optimizer& full, const OptimizerOptions& options, Communicator& comm);

  Optimizer& shard_optimizer() { return *inner_; }

  // Collective: flat gradients (zeros for parameters without one) reduce-scattered (average)
  // into this rank's slice. Every rank calls it once per step, also one whose backward reached
  // no parameter (it contributes zeros).
  void reduce_gradients();
  // Not collective: divides this rank's gradient slice by the scaler's scale and records, on the
  // device, whether it holds an inf/NaN (scaler.unscale_ of shard_optimizer()). The ranks'
  // flags are summed by the next clip_grad_norm() or by step(scaler).
  void unscale_(GradScaler& scaler);
  // Collective: the global L2 norm of the averaged gradients, computed from the slices; scales
  // the slices like clip_grad_norm_ when it exceeds max_norm (infinity: only measures). After
  // unscale_, the same all-reduce sums the overflow flags.
  double clip_grad_norm(double max_norm);
  // Collective: updates this rank's slice (skipping parameters no rank gave a gradient), then
  // all-gathers the parameters.
  void step();
  // Collective: step() unless some rank's gradient slice was inf/NaN (then every rank skips,
  // parameters and optimizer state untouched); unscales first if unscale_ was not called. Returns
  // whether it stepped; call scaler.update() after it. A disabled scaler: plain step().
  bool step(GradScaler& scaler);
  // Parameter indices (across the full optimizer's groups) whose .grad was undefined on every
  // rank at the last reduce_gradients(), ascending: step() leaves them as they are.
  const std::vector<int>& last_unused_parameters() const { return unused_; }

  // Collective: the state in the unsharded layout, complete on every rank.
  NamedTensors state_tensors();
  // Not collective: takes this rank's slice of an unsharded state, and refreshes the master
  // weights from the parameters (load the model first).
  void load_state_tensors(const NamedTensors& entries);

  // Bytes of optimizer state (moments and master weights) this rank holds, and what one rank
  // would hold without sharding. Known after the first step.
  int64_t state_bytes_sharded() const;
  int64_t state_bytes_unsharded() const;
  int64_t numel() const { return numel_; }         // parameters' elements
  int64_t shard_numel() const { return shard_numel_; }   // elements per rank (with padding)

 private:
  struct Piece {  // where one parameter meets this rank's slice
    int param;            // index across the full optimizer's groups
    int64_t begin, size;  // in the parameter's flattened elements
    Tensor master, grad;  // its views of master_ and grad_shard_: the sharded optimizer's parameter
  };
  void copy_params_to_master();
  void gather_params();

  Communicator& comm_;
  std::vector<Tensor> params_;       // across groups, in order
  std::vector<int64_t> offsets_;     // each parameter's start in the flat layout
  std::vector<int> group_of_;        // each parameter's group
  bool params_f32_ = true;
  int64_t numel_ = 0, padded_ = 0, shard_numel_ = 0, my_begin_ = 0;
  // Reduce-scatter layout: world chunks of chunk_ = shard_numel_ gradient elements then one used
  // flag per parameter. All-gather layout: the first padded_ elements, parameters back to back.
  int64_t chunk_ = 0;
  Tensor flat_;                      // [world * chunk] f32
  Tensor reduced_;                   // [chunk] f32: my gradient slice (grad_shard_), then the flags
  Tensor master_, grad_shard_;       // [shard] f32
  std::vector<Piece> pieces_;        // in the sharded optimizer's parameter order
  std::unique_ptr<Optimizer> inner_;  // shard_optimizer()
  std::unique_ptr<UsedFlags> used_;
  std::vector<int> unused_;
  // Since reduce_gradients(): the scaler unscale_ ran for, and whether the ranks summed its flag.
  GradScaler* unscaled_by_ = nullptr;
  bool flag_summed_ = false;
};

}  // namespace kiln::dist
