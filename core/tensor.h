// kiln::Tensor: a strided view of a Storage, with an element type, a device and, when it takes
// part in autograd, a gradient and the node that made it. Copying a Tensor copies a handle.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/shape.h"
#include "core/storage.h"

namespace kiln {

class Node;
class Tensor;
using TensorHook = std::function<Tensor(const Tensor& grad)>;     // may return a new gradient
using PostAccumulateGradHook = std::function<void(Tensor& param)>;  // runs after .grad is updated

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = kCPU;
  bool requires_grad = false;
};

struct AutogradMeta;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  std::unique_ptr<AutogradMeta> autograd;  // null until autograd needs it
  ~TensorImpl();
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}
  // A fresh contiguous tensor with uninitialised memory.
  static Tensor empty(const Shape& shape, TensorOptions opts = {});
  // A view on existing storage.
  static Tensor make_view(std::shared_ptr<Storage> storage, Shape shape, Shape strides,
                          int64_t offset, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  // How many Tensor handles share this tensor (not its memory: views have handles of their own).
  long use_count() const { return impl_.use_count(); }

  // ---- metadata
  const Shape& shape() const { return checked().shape; }
  const Shape& strides() const { return checked().strides; }
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(shape()); }
  int64_t offset() const { return checked().offset; }
  DType dtype() const { return checked().dtype; }
  Device device() const { return checked().storage->device(); }
  bool is_cuda() const { return device().is_cuda(); }
  bool is_contiguous() const;
  std::size_t element_size() const { return kiln::element_size(dtype()); }
  const std::shared_ptr<Storage>& storage() const { return checked().storage; }
  TensorOptions options() const { return {dtype(), device(), false}; }
  std::string meta_str() const;  // "f32[2, 3] on cpu": what error messages print

  // ---- data
  void* data_ptr() const;
  template <class T> T* data() const {
    KILN_CHECK(dtype_of<T>::value == dtype(), "data<", dtype_of<T>::value, ">() on a ", meta_str());
    return static_cast<T*>(data_ptr());
  }
  template <class T> T item() const;  // the one element, converted to T (copies from the GPU)
  double item() const { return item<double>(); }
  template <class T> std::vector<T> to_vector() const;  // all elements, row-major, converted
  std::string str() const;  // PyTorch-like "tensor([...], dtype=..., device=...)"

  // ---- views (no copies); differentiable
  Tensor view(const Shape& shape) const;     // -1 infers one size; needs compatible strides
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor expand(const Shape& shape) const;          // -1 keeps a size
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // ---- copies and conversions; differentiable
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;  // itself when already there
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const { return to(device).to(dtype); }
  Tensor cpu() const { return to(kCPU); }

  // ---- in place (bump the version counter; not recorded by autograd)
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);  // broadcasts src; converts dtype and device
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double value);

  // ---- autograd
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);  // only on leaves
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  Tensor& mutable_grad() const;  // the stored .grad handle (undefined until the first backward)
  // Seeds with ones for a scalar; otherwise pass the gradient of the output.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, cut from the graph
  // Makes this tensor (every handle to it) refer to `data`'s storage, shape and dtype,
  // keeping its autograd identity: how Module::to() moves parameters (PyTorch's set_data).
  void set_data(const Tensor& data) const;
  uint32_t version() const { return storage()->version(); }
  void bump_version() const { storage()->bump_version(); }
  // Hook on the gradient flowing into this tensor; a defined return value replaces it.
  void register_hook(TensorHook hook) const;
  // Leaves only: runs after the gradient has been accumulated into .grad.
  void register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const;
  // Internal: the gradient edge for this tensor (grad_fn, or the leaf's accumulator).
  std::shared_ptr<Node> gradient_edge() const;
  void set_grad_fn(std::shared_ptr<Node> fn) const;

 private:
  TensorImpl& checked() const {
    KILN_CHECK(impl_, "use of an undefined tensor");
    return *impl_;
  }
  AutogradMeta& autograd_meta() const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- creation
Tensor empty(const Shape& shape, TensorOptions opts = {});
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
Tensor full(const Shape& shape, double value, TensorOptions opts = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
Tensor arange(double start, double end, double step = 1.0, TensorOptions opts = {});
Tensor arange(int64_t end, TensorOptions opts = {.dtype = DType::i64});
// Copies host values into a new tensor of `shape` (converted to opts.dtype).
Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions opts = {});
Tensor from_vector(const std::vector<float>& values, const Shape& shape, TensorOptions opts = {});
Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape,
                   TensorOptions opts = {.dtype = DType::i64});
Tensor scalar_tensor(double value, TensorOptions opts = {});

}  // namespace kiln
