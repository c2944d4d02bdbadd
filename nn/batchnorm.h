// BatchNorm1d and BatchNorm2d, as torch.nn's: batch statistics in training (updating the
// running statistics), running statistics in eval. Parameters and buffers carry PyTorch's
// names (weight, bias, running_mean, running_var, num_batches_tracked), so state_dict keys
// match a PyTorch model's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "nn/module.h"

namespace kiln::nn {

// What BatchNorm1d and BatchNorm2d share; they differ only in the input ranks they accept.
class BatchNorm : public Module {
 public:
  // momentum nullopt: the running statistics are the cumulative average over all batches
  // (PyTorch's momentum=None), weighting batch k by 1 / k.
  BatchNorm(std::string type_name, int64_t num_features, double eps, std::optional<double> momentum,
            bool affine, bool track_running_stats);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;

  int64_t num_features() const { return num_features_; }
  double eps() const { return eps_; }
  std::optional<double> momentum() const { return momentum_; }

  // Handles to the registered tensors (a Tensor copy shares its data, and Module::to() moves
  // the data in place), so these follow the module. weight, bias: [C], undefined unless
  // affine. running_mean, running_var: [C] f32; num_batches_tracked: i64 scalar; all three
  // undefined unless track_running_stats.
  Tensor weight, bias;
  Tensor running_mean, running_var, num_batches_tracked;

 protected:
  // Throws naming the module when x has a rank the module does not take.
  virtual void check_input_dim(const Tensor& x) const = 0;

 private:
  int64_t num_features_;
  double eps_;
  std::optional<double> momentum_;
  bool affine_, track_running_stats_;
};

// Input [N, C] or [N, C, L].
class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true)
      : BatchNorm("BatchNorm1d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input_dim(const Tensor& x) const override;
};

// Input [N, C, H, W].
class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true)
      : BatchNorm("BatchNorm2d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input_dim(const Tensor& x) const override;
};

}  // namespace kiln::nn
