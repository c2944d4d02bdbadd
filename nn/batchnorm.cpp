#include "nn/batchnorm.h"

#include <sstream>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln::nn {

BatchNorm::BatchNorm(std::string type_name, int64_t num_features, double eps,
                     std::optional<double> momentum, bool affine, bool track_running_stats)
    : Module(std::move(type_name)), num_features_(num_features), eps_(eps), momentum_(momentum),
      affine_(affine), track_running_stats_(track_running_stats) {
  KILN_CHECK(num_features > 0, this->type_name(), ": num_features must be positive, got ",
             num_features);
  KILN_CHECK(eps >= 0, this->type_name(), ": eps must be >= 0, got ", eps);
  KILN_CHECK(!momentum || (*momentum >= 0 && *momentum <= 1), this->type_name(),
             ": momentum must be in [0, 1], got ", momentum.value_or(0));
  if (affine) {
    weight = register_parameter("weight", ones({num_features}));
    bias = register_parameter("bias", zeros({num_features}));
  }
  if (track_running_stats) {
    running_mean = register_buffer("running_mean", zeros({num_features}));
    running_var = register_buffer("running_var", ones({num_features}));
    num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, {.dtype = DType::i64}));
  }
}

Tensor BatchNorm::forward(const Tensor& x) {
  check_input_dim(x);
  KILN_CHECK(x.size(1) == num_features_, type_name(), "(", num_features_, "): input ", x.meta_str(),
             " has ", x.size(1), " channels, expected ", num_features_);
  // PyTorch's _BatchNorm.forward: count the batch, and with momentum=None weight it by
  // 1 / (batches seen), which makes the running statistics a plain average.
  double factor = momentum_.value_or(0.0);
  if (is_training() && track_running_stats_) {
    NoGradGuard no_grad;
    const Tensor one = ones({}, {.dtype = DType::i64, .device = num_batches_tracked.device()});
    num_batches_tracked.add_(one);
    if (!momentum_) factor = 1.0 / num_batches_tracked.item<double>();
  }
  // Without running statistics there is nothing else to normalise with, even in eval.
  const bool use_batch_stats = is_training() || !track_running_stats_;
  return batch_norm(x, weight, bias, running_mean, running_var, use_batch_stats, factor, eps_);
}

std::string BatchNorm::extra_repr() const {
  std::ostringstream os;
  os << num_features_ << ", eps=" << eps_ << ", momentum=";
  if (momentum_) os << *momentum_;
  else os << "None";
  os << ", affine=" << (affine_ ? "true" : "false")
     << ", track_running_stats=" << (track_running_stats_ ? "true" : "false");
  return os.str();
}

void BatchNorm1d::check_input_dim(const Tensor& x) const {
  KILN_CHECK(x.dim() == 2 || x.dim() == 3, type_name(), "(", num_features(),
             "): expected a 2D [N, C] or 3D [N, C, L] input, got ", x.meta_str());
}

void BatchNorm2d::check_input_dim(const Tensor& x) const {
  KILN_CHECK(x.dim() == 4, type_name(), "(", num_features(),
             "): expected a 4D [N, C, H, W] input, got ", x.meta_str());
}

}  // namespace kiln::nn
