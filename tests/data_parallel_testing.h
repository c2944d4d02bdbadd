// The model, data and comparisons the data-parallel tests (test_ddp, test_zero_f16) share: a
// small MLP, a fixed pseudo-random global batch per step that every process draws alike, and
// the flattened weights to compare runs by.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/generator.h"
#include "core/ops.h"
#include "models/registry.h"
#include "optim/param_groups.h"
#include "optim/registry.h"

namespace kiln::testing {

constexpr int64_t kGlobalBatch = 12;  // divisible by 2, 3 and by their micro-steps
constexpr int64_t kFeatures = 12, kClasses = 4;

// The same initial weights in every process: 1x3x4 inputs -> 16 -> 8 -> kClasses.
inline std::shared_ptr<nn::Module> make_mlp() {
  manual_seed(0);
  models::ModelSpec spec;
  spec.name = "mlp";
  spec.hidden_sizes = {16, 8};
  spec.num_classes = kClasses;
  spec.in_channels = 1;
  spec.height = 3;
  spec.width = 4;
  return models::make_model(spec);
}

// The global batch of step `step` (inputs in [-1, 1), class targets), the same in every
// process; `seed` picks the sequence.
inline std::pair<Tensor, Tensor> global_batch(int step, uint64_t seed = 12345) {
  std::vector<double> x(static_cast<size_t>(kGlobalBatch * kFeatures));
  std::vector<int64_t> y(static_cast<size_t>(kGlobalBatch));
  uint64_t s = seed + static_cast<uint64_t>(step) * 777;
  auto next = [&] {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(s >> 11) / static_cast<double>(1ULL << 53);
  };
  for (double& v : x) v = 2 * next() - 1;
  for (int64_t& v : y) v = static_cast<int64_t>(next() * kClasses) % kClasses;
  return {from_vector(x, {kGlobalBatch, 1, 3, 4}), from_vector(y, {kGlobalBatch})};
}

// AdamW, lr 1e-2, weight decay 0.1 on the matrices.
inline std::unique_ptr<Optimizer> make_adamw(const nn::Module& model) {
  return make_optimizer("adamw", make_param_groups(model.named_parameters(), 0.1), {.lr = 1e-2});
}

// Every parameter's values, in order, back to back.
inline std::vector<float> flat_weights(const nn::Module& model) {
  std::vector<float> out;
  for (const Tensor& p : model.parameters()) {
    const auto v = p.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace kiln::testing
