// Tensor metadata, element access and printing. Views live in core/ops/view.cpp, copies and
// conversions in core/ops/copy.cpp, the autograd parts in core/autograd.cpp.
#include "core/tensor.h"

#include <cmath>
#include <cstdio>
#include <ostream>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

TensorImpl::~TensorImpl() = default;

Tensor Tensor::empty(const Shape& shape, TensorOptions opts) {
  for (int64_t s : shape)
    KILN_CHECK(s >= 0, "negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  const std::size_t nbytes = static_cast<std::size_t>(shape_numel(shape)) * kiln::element_size(opts.dtype);
  impl->storage = std::make_shared<Storage>(nbytes, opts.device, allocator_for(opts.device));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = opts.dtype;
  Tensor t(std::move(impl));
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor Tensor::make_view(std::shared_ptr<Storage> storage, Shape shape, Shape strides,
                         int64_t offset, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  const Shape& sh = shape();
  const Shape& st = strides();
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

std::string Tensor::meta_str() const {
  if (!defined()) return "undefined tensor";
  return detail::str_cat(dtype(), shape_str(shape()), " on ", device());
}

void* Tensor::data_ptr() const {
  const TensorImpl& t = checked();
  return static_cast<char*>(t.storage->data()) + t.offset * static_cast<int64_t>(element_size());
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = detach().to(kCPU).to(DType::f64).contiguous();
  const double* p = c.data<double>();
  return std::vector<T>(p, p + c.numel());
}

template <class T>
T Tensor::item() const {
  KILN_CHECK(numel() == 1, "item() needs a one-element tensor, got ", meta_str());
  Tensor c = detach().to(kCPU).contiguous();
  return KILN_DISPATCH_ALL(c.dtype(), "item", [&]() -> T {
    return static_cast<T>(static_cast<opmath_t<scalar_t>>(*c.data<scalar_t>()));
  });
}

template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template double Tensor::item<double>() const;
template float Tensor::item<float>() const;
template int64_t Tensor::item<int64_t>() const;
template int Tensor::item<int>() const;
template bool Tensor::item<bool>() const;

namespace {

// PyTorch-style printing: nested brackets, four decimals for floats, ... for big tensors.
// `c` holds the values as f64; `is_float` says how the original dtype prints.
void print_values(std::ostream& os, const Tensor& c, bool is_float, int64_t dim, int64_t offset,
                  int indent) {
  const double* p = c.data<double>();
  const int64_t n = c.size(dim);
  const bool summarize = c.numel() > 1000 && n > 6;
  os << '[';
  for (int64_t i = 0; i < n; ++i) {
    if (summarize && i == 3) {
      os << "...";
      i = n - 3;
      os << (dim + 1 == c.dim() ? ", " : ",\n" + std::string(indent + 1, ' '));
    }
    const int64_t off = offset + i * c.stride(dim);
    if (dim + 1 == c.dim()) {
      char buf[32];
      if (is_float) std::snprintf(buf, sizeof buf, "%.4f", p[off]);
      else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(p[off]));
      os << buf;
    } else {
      print_values(os, c, is_float, dim + 1, off, indent + 1);
    }
    if (i + 1 < n) os << (dim + 1 == c.dim() ? ", " : ",\n" + std::string(indent + 1, ' '));
  }
  os << ']';
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::ostringstream os;
  Tensor c = detach().to(kCPU).to(DType::f64).contiguous();
  os << "tensor(";
  if (c.dim() == 0) {
    char buf[32];
    if (is_floating(dtype())) std::snprintf(buf, sizeof buf, "%.4f", c.data<double>()[0]);
    else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(c.data<double>()[0]));
    os << buf;
  } else {
    print_values(os, c, is_floating(dtype()), 0, 0, 7);
  }
  if (dtype() != DType::f32) os << ", dtype=" << dtype();
  if (!device().is_cpu()) os << ", device=" << device();
  if (requires_grad()) os << (grad_fn() ? ", grad_fn=<" + grad_fn()->name() + ">" : ", requires_grad=True");
  os << ')';
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace kiln
