// Reverse-mode autograd, micrograd's idea with tensors: each op output points to a Node that
// knows its inputs' nodes (edges) and a closure mapping the output gradient to input gradients.
// backward() orders the nodes topologically and walks them in reverse.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln {

class Node {
 public:
  explicit Node(std::string name);
  virtual ~Node() = default;
  // Gradients for each entry of next_edges (undefined where an input needs none).
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  // Frees saved tensors; a later apply() reports that the graph was already used.
  virtual void release() {}

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return sequence_nr_; }

  std::vector<std::shared_ptr<Node>> next_edges;  // null entries: inputs without gradient
  std::vector<TensorHook> pre_hooks;              // hooks of the tensor this node produced

 private:
  std::string name_;
  uint64_t sequence_nr_;
};

// A tensor saved for backward. Unpacking checks that nobody modified it in place since.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  Tensor unpack(const char* node_name) const;

 private:
  Tensor tensor_;
  uint32_t saved_version_ = 0;
};

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

// The node of an ordinary op: a name and a closure. release() drops the closure and with it
// every tensor it captured.
class FunctionNode : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release() override { fn_ = nullptr; }

 private:
  BackwardFn fn_;
};

// The sink for a leaf tensor's gradient: accumulates into .grad, then runs the
// post-accumulate-grad hooks (data-parallel gradient sync plugs in here).
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf);
  std::vector<Tensor> apply(const Tensor& grad) override;
  std::vector<PostAccumulateGradHook> post_hooks;

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;            // set for op outputs
  std::shared_ptr<AccumulateGrad> accumulator;  // set lazily for leaves
};

// ---- grad mode
struct GradMode {
  static bool is_enabled();
  static void set_enabled(bool on);
};

// Disables graph recording in its scope, like torch.no_grad().
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// ---- what ops call
// True when grad mode is on and any input requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
// Makes `output` the result of a node named `name` over `inputs`; `fn` returns one gradient
// per input, in order (undefined for inputs that need none). No-op when grad is not needed.
void record(const char* name, Tensor& output, std::initializer_list<const Tensor*> inputs,
            BackwardFn fn);
// The same for ops with any number of inputs (cat).
bool needs_grad(const std::vector<const Tensor*>& inputs);
void record(const char* name, Tensor& output, const std::vector<const Tensor*>& inputs,
            BackwardFn fn);

// Runs backward from `roots` seeded with `grads`.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph);

}  // namespace kiln
