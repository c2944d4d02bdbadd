// Linear, the activations as modules, Flatten, Sequential and CrossEntropyLoss.
#pragma once

#include <initializer_list>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "nn/module.h"

namespace kiln {
class Generator;
}

namespace kiln::nn {

// y = x W^T + b with W [out, in], as torch.nn.Linear.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string extra_repr() const override;
  // Handles to the registered tensors (a Tensor copy shares its data, and Module::to() moves
  // the data in place), so these follow the module.
  Tensor weight;
  Tensor bias;  // undefined when bias=false

 private:
  int64_t in_, out_;
};

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x) override { return relu(x); }
};

// tanh approximation, as GPT-2 uses.
class GELU : public Module {
 public:
  GELU() : Module("GELU") {}
  Tensor forward(const Tensor& x) override { return gelu(x); }
};

// [N, d1, d2, ...] -> [N, d1*d2*...]
class Flatten : public Module {
 public:
  Flatten() : Module("Flatten") {}
  Tensor forward(const Tensor& x) override { return x.flatten(1); }
};

class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  // Appends a module; children are named "0", "1", ... as in PyTorch.
  template <class M>
  std::shared_ptr<M> add(std::shared_ptr<M> m) {
    layers_.push_back(m);
    return register_module(std::to_string(layers_.size() - 1), std::move(m));
  }
  Tensor forward(const Tensor& x) override;
  size_t size() const { return layers_.size(); }
  Module& operator[](size_t i) { return *layers_.at(i); }

 private:
  std::vector<std::shared_ptr<Module>> layers_;
};

// Loss on logits [N, C] and integer targets [N], as torch.nn.CrossEntropyLoss.
class CrossEntropyLoss {
 public:
  explicit CrossEntropyLoss(double label_smoothing = 0.0, int64_t ignore_index = -100)
      : label_smoothing_(label_smoothing), ignore_index_(ignore_index) {}
  Tensor operator()(const Tensor& logits, const Tensor& targets) const {
    return cross_entropy(logits, targets, ignore_index_, Reduction::mean, label_smoothing_);
  }

 private:
  double label_smoothing_;
  int64_t ignore_index_;
};

}  // namespace kiln::nn
