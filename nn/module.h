// nn::Module: the base of every layer and model, as in PyTorch. A module owns named
// parameters (tensors that require grad), buffers (state that is saved but not trained, like
// BatchNorm's running mean) and child modules; names join with dots ("layers.0.weight").
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kiln::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  std::vector<Tensor> parameters() const;
  NamedTensors named_parameters() const;
  NamedTensors named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  int64_t num_parameters() const;

  // Parameters then buffers, detached, by name.
  NamedTensors state_dict() const;
  // Copies values in. strict: every key must match both ways. Errors name the keys and shapes.
  void load_state_dict(const NamedTensors& state, bool strict = true);

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();  // drops the gradients (PyTorch's set_to_none=True)
  // Moves parameters and buffers; handles held elsewhere (the optimizer's) follow.
  void to(Device device);

  const std::string& type_name() const { return type_name_; }
  // "Linear(in_features=784, out_features=512, bias=true)": shown by repr().
  virtual std::string extra_repr() const { return ""; }
  std::string repr(int indent = 0) const;

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, NamedTensors& out, bool buffers) const;

  std::string type_name_;
  // unique_ptr keeps each tensor's address stable, so modules can hold references.
  std::vector<std::pair<std::string, std::unique_ptr<Tensor>>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace kiln::nn
