// Indexing (index_select, gather, scatter_add, index_add) and joining (cat). Each backward is
// the op's adjoint: select <-> add at the same indices, gather <-> scatter_add, cat <-> narrow.
#include "core/dispatch/index.h"

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index)>
    index_select_stub{"index_select"};
DispatchStub<void(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src)>
    index_add_stub{"index_add"};
DispatchStub<void(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index)> gather_stub{
    "gather"};
DispatchStub<void(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src)>
    scatter_add_stub{"scatter_add"};

namespace {

void check_index(const char* op, const Tensor& x, const Tensor& index) {
  KILN_CHECK(x.defined() && index.defined(), op, ": undefined tensor");
  KILN_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32, op,
             ": index must be i32 or i64, got ", index.meta_str());
  KILN_CHECK(index.device() == x.device(), op, ": index ", index.meta_str(), " and input ",
             x.meta_str(), " are on different devices");
}

// Accumulating ops add in the element type; bool and u8 have no useful sum (nor CUDA atomics).
void check_addable(const char* op, const Tensor& self, const Tensor& src) {
  KILN_CHECK(self.device() == src.device(), op, ": self ", self.meta_str(), " and src ",
             src.meta_str(), " are on different devices");
  KILN_CHECK(self.dtype() == src.dtype(), op, ": self ", self.meta_str(), " and src ",
             src.meta_str(), " differ in dtype");
  const DType t = self.dtype();
  KILN_CHECK(is_floating(t) || t == DType::i32 || t == DType::i64, op,
             ": expected a floating, i32 or i64 tensor, got ", self.meta_str());
}

// A contiguous copy of `self` that the kernel may add into: the out-of-place ops' result.
Tensor accumulation_buffer(const Tensor& self) {
  Tensor out = empty(self.shape(), self.options());
  out.copy_(self);
  return out;
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("index_select", x, index);
  KILN_CHECK(x.dim() >= 1, "index_select: input must have at least 1 dim, got ", x.meta_str());
  KILN_CHECK(index.dim() <= 1, "index_select: index must be 0-D or 1-D, got ", index.meta_str());
  dim = wrap_dim(dim, x.dim(), "index_select");
  Shape shape = x.shape();
  shape[dim] = index.numel();
  Tensor out = empty(shape, x.options());
  if (index.numel() > 0) {
    NoGradGuard no_grad;
    index_select_stub(out.device(), out, x.contiguous(), dim, index.contiguous());
  }
  if (needs_grad({&x})) {
    record("IndexSelectBackward", out, {&x},
           [saved_index = SavedTensor(index), x_shape = x.shape(),
            dim](const Tensor& g) -> std::vector<Tensor> {
             const Tensor index = saved_index.unpack("IndexSelectBackward");
             return {index_add(zeros(x_shape, g.options()), dim, index, g)};
           });
  }
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("gather", x, index);
  KILN_CHECK(x.dim() >= 1 && index.dim() == x.dim(), "gather: index ", index.meta_str(),
             " must have as many dims as input ", x.meta_str());
  dim = wrap_dim(dim, x.dim(), "gather");
  for (int64_t d = 0; d < x.dim(); ++d)
    KILN_CHECK(d == dim || index.size(d) <= x.size(d), "gather: index ", index.meta_str(),
               " is larger than input ", x.meta_str(), " in dim ", d);
  Tensor out = empty(index.shape(), x.options());
  if (out.numel() > 0) {
    NoGradGuard no_grad;
    gather_stub(out.device(), out, x.contiguous(), dim, index.contiguous());
  }
  if (needs_grad({&x})) {
    record("GatherBackward", out, {&x},
           [saved_index = SavedTensor(index), x_shape = x.shape(),
            dim](const Tensor& g) -> std::vector<Tensor> {
             const Tensor index = saved_index.unpack("GatherBackward");
             return {scatter_add(zeros(x_shape, g.options()), dim, index, g)};
           });
  }
  return out;
}

Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", self, index);
  check_addable("scatter_add", self, src);
  KILN_CHECK(self.dim() >= 1 && index.dim() == self.dim() && src.dim() == self.dim(),
             "scatter_add: self ", self.meta_str(), ", index ", index.meta_str(), " and src ",
             src.meta_str(), " must have the same number of dims");
  dim = wrap_dim(dim, self.dim(), "scatter_add");
  for (int64_t d = 0; d < self.dim(); ++d) {
    KILN_CHECK(index.size(d) <= src.size(d) && (d == dim || index.size(d) <= self.size(d)),
               "scatter_add: index ", index.meta_str(), " is larger than src ", src.meta_str(),
               " or self ", self.meta_str(), " in dim ", d);
  }
  Tensor out = accumulation_buffer(self);
  if (index.numel() > 0) {
    NoGradGuard no_grad;
    scatter_add_stub(out.device(), out, dim, index.contiguous(), src.contiguous());
  }
  if (needs_grad({&self, &src})) {
    record("ScatterAddBackward", out, {&self, &src},
           [saved_index = SavedTensor(index), src_shape = src.shape(), dim,
            need_src = src.requires_grad()](const Tensor& g) -> std::vector<Tensor> {
             Tensor grad_src;
             if (need_src) {
               const Tensor index = saved_index.unpack("ScatterAddBackward");
               grad_src = gather(g, dim, index);
               if (grad_src.shape() != src_shape) {
                 // src elements beyond index's extent were never added: zero gradient.
                 Tensor padded = zeros(src_shape, g.options());
                 Tensor window = padded;
                 for (int64_t d = 0; d < index.dim(); ++d)
                   window = window.narrow(d, 0, index.size(d));
                 window.copy_(grad_src);
                 grad_src = padded;
               }
             }
             return {g, grad_src};
           });
  }
  return out;
}

Tensor index_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index("index_add", self, index);
  check_addable("index_add", self, src);
  KILN_CHECK(index.dim() <= 1, "index_add: index must be 0-D or 1-D, got ", index.meta_str());
  KILN_CHECK(self.dim() >= 1 && src.dim() == self.dim(), "index_add: self ", self.meta_str(),
             " and src ", src.meta_str(), " must have the same number of dims");
  dim = wrap_dim(dim, self.dim(), "index_add");
  for (int64_t d = 0; d < self.dim(); ++d) {
    const int64_t want = d == dim ? index.numel() : self.size(d);
    KILN_CHECK(src.size(d) == want, "index_add: src ", src.meta_str(), " does not match self ",
               self.meta_str(), " and index ", index.meta_str(), " along dim ", dim);
  }
  Tensor out = accumulation_buffer(self);
  if (index.numel() > 0) {
    NoGradGuard no_grad;
    index_add_stub(out.device(), out, dim, index.contiguous(), src.contiguous());
  }
  if (needs_grad({&self, &src})) {
    record("IndexAddBackward", out, {&self, &src},
           [saved_index = SavedTensor(index), dim,
            need_src = src.requires_grad()](const Tensor& g) -> std::vector<Tensor> {
             Tensor grad_src;
             if (need_src) grad_src = index_select(g, dim, saved_index.unpack("IndexAddBackward"));
             return {g, grad_src};
           });
  }
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  KILN_CHECK(!tensors.empty(), "cat: expected a non-empty list of tensors");
  const Tensor& first = tensors[0];
  KILN_CHECK(first.defined() && first.dim() >= 1, "cat: tensors must have at least 1 dim");
  dim = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    KILN_CHECK(t.defined(), "cat: tensor ", i, " is undefined");
    KILN_CHECK(t.dtype() == first.dtype() && t.device() == first.device(), "cat: tensor ", i, " (",
               t.meta_str(), ") differs in dtype or device from tensor 0 (", first.meta_str(), ")");
    bool same = t.dim() == first.dim();
    for (int64_t d = 0; same && d < t.dim(); ++d) same = d == dim || t.size(d) == first.size(d);
    KILN_CHECK(same, "cat: tensor ", i, " (", t.meta_str(), ") does not match tensor 0 (",
               first.meta_str(), ") outside dim ", dim);
    shape[dim] += t.size(dim);
  }
  Tensor out = empty(shape, first.options());
  std::vector<int64_t> starts;
  int64_t start = 0;
  for (const Tensor& t : tensors) {
    starts.push_back(start);
    if (t.size(dim) > 0) out.narrow(dim, start, t.size(dim)).copy_(t);
    start += t.size(dim);
  }

  std::vector<const Tensor*> inputs;
  std::vector<int64_t> sizes;
  for (const Tensor& t : tensors) {
    inputs.push_back(&t);
    sizes.push_back(t.size(dim));
  }
  record("CatBackward", out, inputs, [starts, sizes, dim](const Tensor& g) -> std::vector<Tensor> {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < sizes.size(); ++i) grads.push_back(g.narrow(dim, starts[i], sizes[i]));
    return grads;
  });
  return out;
}

}  // namespace kiln
