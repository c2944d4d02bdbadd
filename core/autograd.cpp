// The autograd engine and the Tensor methods that touch the graph.
#include "core/autograd.h"

#include <atomic>
#include <queue>
#include <unordered_map>

#include "core/ops.h"

namespace kiln {

// ---------------------------------------------------------------- grad mode
namespace {
thread_local bool grad_enabled = true;
std::atomic<uint64_t> next_sequence_nr{0};
}  // namespace

bool GradMode::is_enabled() { return grad_enabled; }
void GradMode::set_enabled(bool on) { grad_enabled = on; }

// ---------------------------------------------------------------- nodes
Node::Node(std::string name) : name_(std::move(name)), sequence_nr_(next_sequence_nr++) {}

SavedTensor::SavedTensor(const Tensor& t) : tensor_(t) {
  if (t.defined()) saved_version_ = t.version();
}

Tensor SavedTensor::unpack(const char* node_name) const {
  if (tensor_.defined() && tensor_.version() != saved_version_) {
    KILN_FAIL("one of the tensors needed for gradient computation has been modified by an "
              "in-place operation: ", tensor_.meta_str(), " saved by ", node_name,
              " is at version ", tensor_.version(), "; expected version ", saved_version_);
  }
  return tensor_;
}

std::vector<Tensor> FunctionNode::apply(const Tensor& grad_output) {
  KILN_CHECK(fn_, "trying to backward through ", name(), " a second time (its saved tensors "
             "were freed after the first backward; pass retain_graph=true the first time)");
  return fn_(grad_output);
}

AccumulateGrad::AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf)
    : Node("AccumulateGrad"), leaf_(leaf) {}

std::vector<Tensor> AccumulateGrad::apply(const Tensor& grad) {
  auto impl = leaf_.lock();
  if (!impl) return {};  // the parameter is gone; nothing to accumulate into
  Tensor leaf(impl);
  Tensor& stored = leaf.mutable_grad();
  if (!stored.defined()) {
    // Like PyTorch, keep the incoming gradient itself when nothing else can see it: the engine
    // holds the only reference to it and to its memory, and it is laid out like the leaf. Else
    // (a view of something the graph still uses, a broadcast, the caller's own tensor) a copy.
    const bool sole_owner = grad.use_count() == 1 && grad.storage().use_count() == 1;
    const bool whole_buffer = grad.is_contiguous() && grad.offset() == 0 &&
                              grad.storage()->nbytes() == static_cast<std::size_t>(grad.numel()) * grad.element_size();
    if (sole_owner && whole_buffer && grad.shape() == leaf.shape() && grad.dtype() == leaf.dtype() &&
        grad.device() == leaf.device() && !grad.requires_grad())
      stored = grad;
    else
      stored = grad.clone();
  } else {
    stored.add_(grad);
  }
  for (auto& hook : post_hooks) hook(leaf);
  return {};
}

// ---------------------------------------------------------------- recording
bool needs_grad(const std::vector<const Tensor*>& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  return needs_grad(std::vector<const Tensor*>(inputs));
}

void record(const char* name, Tensor& output, const std::vector<const Tensor*>& inputs,
            BackwardFn fn) {
  if (!needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->next_edges.reserve(inputs.size());
  for (const Tensor* t : inputs)
    node->next_edges.push_back(t->defined() && t->requires_grad() ? t->gradient_edge() : nullptr);
  output.set_grad_fn(std::move(node));
}

void record(const char* name, Tensor& output, std::initializer_list<const Tensor*> inputs,
            BackwardFn fn) {
  record(name, output, std::vector<const Tensor*>(inputs), std::move(fn));
}

// ---------------------------------------------------------------- the engine
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph) {
  KILN_CHECK(roots.size() == grads.size(), "backward: ", roots.size(), " outputs but ",
             grads.size(), " gradients");
  // Count, for every node reachable from the roots, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, Tensor> pending;  // summed gradient flowing into each node
  std::vector<Node*> stack;
  for (const Tensor& r : roots) {
    KILN_CHECK(r.requires_grad(), "backward on a tensor that does not require grad (",
               r.meta_str(), ")");
    Node* n = r.gradient_edge().get();
    if (dependencies.emplace(n, 0).second) stack.push_back(n);
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& next : n->next_edges) {
      if (!next) continue;
      if (dependencies[next.get()]++ == 0) stack.push_back(next.get());
    }
  }

  // Ready nodes run newest first (highest sequence number), which is deterministic and
  // frees activations in reverse order of creation, like PyTorch.
  auto later = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr() < b->sequence_nr();
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, decltype(later)>
      ready(later);

  NoGradGuard no_grad;
  auto add_grad = [&](const std::shared_ptr<Node>& node, const Tensor& g) {
    Tensor& slot = pending[node.get()];
    slot = slot.defined() ? add(slot, g) : g;
  };
  for (size_t i = 0; i < roots.size(); ++i) {
    std::shared_ptr<Node> n = roots[i].gradient_edge();
    add_grad(n, grads[i]);
  }
  for (const Tensor& r : roots) {
    std::shared_ptr<Node> n = r.gradient_edge();
    if (dependencies[n.get()] == 0) {
      dependencies[n.get()] = -1;  // queued once
      ready.push(n);
    }
  }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    Tensor grad;
    if (auto it = pending.find(node.get()); it != pending.end()) {
      grad = std::move(it->second);
      pending.erase(it);
    }
    // A node no gradient reached (every path gave none) still releases its dependants.
    std::vector<Tensor> input_grads;
    if (grad.defined()) {
      for (auto& hook : node->pre_hooks) {
        Tensor replaced = hook(grad);
        if (replaced.defined()) grad = replaced;
      }
      input_grads = node->apply(grad);
    }
    if (!retain_graph) node->release();
    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const auto& next = node->next_edges[i];
      if (!next) continue;
      if (i < input_grads.size() && input_grads[i].defined()) add_grad(next, input_grads[i]);
      if (--dependencies[next.get()] == 0) ready.push(next);
    }
  }
}

// ---------------------------------------------------------------- Tensor methods
AutogradMeta& Tensor::autograd_meta() const {
  TensorImpl& t = checked();
  if (!t.autograd) t.autograd = std::make_unique<AutogradMeta>();
  return *t.autograd;
}

bool Tensor::requires_grad() const {
  const TensorImpl& t = checked();
  return t.autograd && (t.autograd->requires_grad || t.autograd->grad_fn);
}

Tensor& Tensor::requires_grad_(bool on) {
  KILN_CHECK(is_leaf(), "requires_grad_ can only change leaf tensors; use detach() first (",
             meta_str(), ")");
  KILN_CHECK(!on || is_floating(dtype()), "only floating tensors can require grad, got ", meta_str());
  autograd_meta().requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const {
  const TensorImpl& t = checked();
  return !t.autograd || !t.autograd->grad_fn;
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  const TensorImpl& t = checked();
  return t.autograd ? t.autograd->grad_fn : none;
}

Tensor Tensor::grad() const {
  const TensorImpl& t = checked();
  return t.autograd ? t.autograd->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined())
    KILN_CHECK(g.shape() == shape(), "set_grad: gradient ", g.meta_str(), " does not match ", meta_str());
  autograd_meta().grad = g;
}

Tensor& Tensor::mutable_grad() const { return autograd_meta().grad; }

void Tensor::set_grad_fn(std::shared_ptr<Node> fn) const { autograd_meta().grad_fn = std::move(fn); }

std::shared_ptr<Node> Tensor::gradient_edge() const {
  AutogradMeta& meta = autograd_meta();
  if (meta.grad_fn) return meta.grad_fn;
  if (!meta.accumulator) meta.accumulator = std::make_shared<AccumulateGrad>(impl_);
  return meta.accumulator;
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  Tensor seed = grad;
  if (!seed.defined()) {
    KILN_CHECK(numel() == 1, "backward() without a gradient needs a scalar output, got ",
               meta_str(), "; pass the gradient of the output");
    seed = ones(shape(), options());
  }
  KILN_CHECK(seed.shape() == shape(), "backward: gradient ", seed.meta_str(), " does not match ",
             meta_str());
  run_backward({*this}, {seed}, retain_graph);
}

Tensor Tensor::detach() const {
  const TensorImpl& t = checked();
  return make_view(t.storage, t.shape, t.strides, t.offset, t.dtype);
}

void Tensor::set_data(const Tensor& data) const {
  TensorImpl& t = checked();
  const TensorImpl& d = *data.impl();
  t.storage = d.storage;
  t.shape = d.shape;
  t.strides = d.strides;
  t.offset = d.offset;
  t.dtype = d.dtype;
  if (t.autograd) t.autograd->grad = Tensor();  // a gradient for the old data no longer fits
}

void Tensor::register_hook(TensorHook hook) const {
  KILN_CHECK(requires_grad(), "register_hook on a tensor that does not require grad (", meta_str(), ")");
  gradient_edge()->pre_hooks.push_back(std::move(hook));
}

void Tensor::register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const {
  KILN_CHECK(is_leaf() && requires_grad(),
             "post-accumulate-grad hooks are for leaf tensors that require grad (", meta_str(), ")");
  std::static_pointer_cast<AccumulateGrad>(gradient_edge())->post_hooks.push_back(std::move(hook));
}

}  // namespace kiln
