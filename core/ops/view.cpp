// Views: new shape/strides/offset over the same storage, no copy. Each is differentiable;
// the gradient of a view is the matching inverse on the gradient.
#include <algorithm>
#include <numeric>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

namespace {

Tensor view_of(const Tensor& t, Shape shape, Shape strides, int64_t offset) {
  return Tensor::make_view(t.storage(), std::move(shape), std::move(strides), offset, t.dtype());
}

// Resolves one -1 and checks the element count.
Shape infer_shape(const Shape& requested, int64_t numel, const Tensor& t, const char* op) {
  Shape shape = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      KILN_CHECK(infer < 0, op, ": only one dimension can be -1 in ", shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else {
      KILN_CHECK(shape[i] >= 0, op, ": bad size in ", shape_str(requested));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    KILN_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(requested),
               " is invalid for ", t.meta_str());
    shape[infer] = numel / known;
  }
  KILN_CHECK(shape_numel(shape) == numel, op, ": shape ", shape_str(requested),
             " is invalid for ", t.meta_str());
  return shape;
}

// Strides for viewing `t` as `shape` without a copy, or empty when impossible (the
// algorithm of PyTorch's computeStride: split the old shape into contiguous chunks).
Shape view_strides(const Tensor& t, const Shape& shape) {
  const Shape& old_shape = t.shape();
  const Shape& old_strides = t.strides();
  Shape strides(shape.size());
  if (t.numel() == 0 || t.dim() == 0) return contiguous_strides(shape);
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[d];
    if (d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return {};
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return {};
  return strides;
}

}  // namespace

Tensor Tensor::view(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), *this, "view");
  Shape strides = view_strides(*this, shape);
  KILN_CHECK(!strides.empty() || shape.empty(), "view: ", meta_str(), " with strides ",
             shape_str(this->strides()), " cannot be viewed as ", shape_str(shape),
             " without a copy; use reshape()");
  Tensor out = view_of(*this, shape, strides, offset());
  Shape in_shape = this->shape();
  record("ViewBackward", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> {
    return {g.reshape(in_shape)};
  });
  return out;
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape shape = infer_shape(requested, numel(), *this, "reshape");
  if (!view_strides(*this, shape).empty() || shape.empty()) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  KILN_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: ", dims.size(),
             " dims given for ", meta_str());
  Shape shape(dims.size()), strides(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = wrap_dim(dims[i], dim(), "permute");
    KILN_CHECK(inverse[d] < 0, "permute: dimension ", d, " repeated");
    inverse[d] = static_cast<int64_t>(i);
    shape[i] = this->shape()[d];
    strides[i] = this->strides()[d];
  }
  Tensor out = view_of(*this, shape, strides, offset());
  record("PermuteBackward", out, {this}, [inverse](const Tensor& g) -> std::vector<Tensor> {
    return {g.permute(inverse)};
  });
  return out;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(d0, dim(), "transpose")], dims[wrap_dim(d1, dim(), "transpose")]);
  return permute(dims);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  KILN_CHECK(step > 0, "slice: step must be positive, got ", step);
  const int64_t n = size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = this->shape(), strides = this->strides();
  shape[d] = (end - start + step - 1) / step;
  strides[d] *= step;
  Tensor out = view_of(*this, shape, strides, offset() + start * this->strides()[d]);
  Shape in_shape = this->shape();
  record("SliceBackward", out, {this},
         [in_shape, d, start, end, step](const Tensor& g) -> std::vector<Tensor> {
           Tensor grad = zeros(in_shape, g.options());
           grad.slice(d, start, end, step).copy_(g);
           return {grad};
         });
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  KILN_CHECK(start >= 0 && length >= 0 && start + length <= size(d), "narrow: [", start, ", ",
             start + length, ") out of range for dim ", d, " of ", meta_str());
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  const int64_t n = size(d);
  KILN_CHECK(index >= -n && index < n, "select: index ", index, " out of range for dim ", d,
             " of ", meta_str());
  if (index < 0) index += n;
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& requested) const {
  KILN_CHECK(requested.size() >= shape().size(), "expand: ", meta_str(), " to ",
             shape_str(requested), " has fewer dims");
  const size_t lead = requested.size() - shape().size();
  Shape shape(requested.size()), strides(requested.size());
  for (size_t i = 0; i < requested.size(); ++i) {
    if (i < lead) {
      KILN_CHECK(requested[i] >= 0, "expand: -1 not allowed in new leading dims");
      shape[i] = requested[i];
      strides[i] = 0;
      continue;
    }
    const int64_t have = this->shape()[i - lead];
    const int64_t want = requested[i] == -1 ? have : requested[i];
    KILN_CHECK(have == want || have == 1, "expand: ", meta_str(), " cannot be expanded to ",
               shape_str(requested));
    shape[i] = want;
    strides[i] = have == want ? this->strides()[i - lead] : 0;
  }
  if (shape == this->shape()) return *this;
  Tensor out = view_of(*this, shape, strides, offset());
  Shape in_shape = this->shape();
  record("ExpandBackward", out, {this}, [in_shape](const Tensor& g) -> std::vector<Tensor> {
    return {sum_to(g, in_shape)};
  });
  return out;
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (size(d) != 1) return *this;
  Shape shape = this->shape(), strides = this->strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  Tensor out = view_of(*this, shape, strides, offset());
  record("SqueezeBackward", out, {this}, [d](const Tensor& g) -> std::vector<Tensor> {
    return {g.unsqueeze(d)};
  });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape shape;
  for (int64_t s : this->shape())
    if (s != 1) shape.push_back(s);
  return reshape(shape);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape shape = this->shape(), strides = this->strides();
  const int64_t stride = d < dim() ? this->strides()[d] * this->shape()[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  Tensor out = view_of(*this, shape, strides, offset());
  record("UnsqueezeBackward", out, {this}, [d](const Tensor& g) -> std::vector<Tensor> {
    return {g.squeeze(d)};
  });
  return out;
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim(start_dim, dim(), "flatten");
  end_dim = wrap_dim(end_dim, dim(), "flatten");
  KILN_CHECK(start_dim <= end_dim, "flatten: start_dim ", start_dim, " > end_dim ", end_dim);
  Shape shape(this->shape().begin(), this->shape().begin() + start_dim);
  int64_t n = 1;
  for (int64_t d = start_dim; d <= end_dim; ++d) n *= this->shape()[d];
  shape.push_back(n);
  shape.insert(shape.end(), this->shape().begin() + end_dim + 1, this->shape().end());
  return reshape(shape);
}

}  // namespace kiln
