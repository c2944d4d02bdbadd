// Copies, conversions, fills and the creation functions built on them.
#include "core/dispatch/copy.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/autograd.h"
#include "core/ops.h"

#ifdef KILN_WITH_CUDA
#include "core/cuda_context.h"
#endif

namespace kiln {

DispatchStub<void(Tensor& dst, const Tensor& src)> copy_stub{"copy"};
DispatchStub<void(Tensor& dst, double value)> fill_stub{"fill"};

namespace {

#ifdef KILN_WITH_CUDA
// Contiguous bytes between host and device (or device and device) on kiln's stream. Reads
// into host memory wait for the copy, so the caller can use the data at once.
void memcpy_between(const Tensor& dst, const Tensor& src) {
  const std::size_t nbytes = static_cast<std::size_t>(src.numel()) * src.element_size();
  const int device = dst.is_cuda() ? dst.device().index : src.device().index;
  cuda::DeviceGuard guard(device);
  cudaStream_t stream = cuda::current_stream(device);
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), nbytes, cudaMemcpyDefault, stream));
  if (!dst.is_cuda()) KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
}
#endif

// Copy of any src into dst of the same shape: converts dtype on src's device first, then
// moves contiguous bytes across devices.
void copy_into(Tensor& dst, const Tensor& src) {
  if (dst.device() == src.device()) {
    copy_stub(dst.device(), dst, src);
    return;
  }
#ifdef KILN_WITH_CUDA
  Tensor staged = src;
  if (src.dtype() != dst.dtype() || !src.is_contiguous()) {
    staged = Tensor::empty(src.shape(), {dst.dtype(), src.device()});
    copy_stub(src.device(), staged, src);
  }
  if (dst.is_contiguous()) {
    memcpy_between(dst, staged);
  } else {
    Tensor tmp = Tensor::empty(dst.shape(), {dst.dtype(), dst.device()});
    memcpy_between(tmp, staged);
    copy_stub(dst.device(), dst, tmp);
  }
#else
  KILN_FAIL("copy from ", src.device(), " to ", dst.device(), ": kiln was built without CUDA");
#endif
}

}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  Tensor s = src.detach();
  if (s.shape() != shape()) s = s.expand(shape());
  copy_into(*this, s);
  bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  fill_stub(device(), *this, value);
  bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  Tensor sum;
  {
    NoGradGuard guard;
    sum = add(detach(), other.detach(), alpha);
  }
  return copy_(sum);
}

Tensor& Tensor::mul_(double value) {
  Tensor prod;
  {
    NoGradGuard guard;
    prod = mul(detach(), value);
  }
  return copy_(prod);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), options());
  copy_into(out, *this);
  record("CloneBackward", out, {this}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor out = Tensor::empty(shape(), {dtype(), device});
  copy_into(out, *this);
  const Device from = this->device();
  record("ToDeviceBackward", out, {this}, [from](const Tensor& g) -> std::vector<Tensor> {
    return {g.to(from)};
  });
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == this->dtype()) return *this;
  Tensor out = Tensor::empty(shape(), {dtype, device()});
  copy_into(out, *this);
  const DType from = this->dtype();
  if (is_floating(dtype))
    record("ToDtypeBackward", out, {this}, [from](const Tensor& g) -> std::vector<Tensor> {
      return {g.to(from)};
    });
  return out;
}

// ---- creation
Tensor empty(const Shape& shape, TensorOptions opts) { return Tensor::empty(shape, opts); }

Tensor full(const Shape& shape, double value, TensorOptions opts) {
  const bool rg = opts.requires_grad;
  opts.requires_grad = false;
  Tensor t = Tensor::empty(shape, opts);
  t.fill_(value);
  if (rg) t.requires_grad_(true);
  return t;
}

Tensor zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0.0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full(shape, 1.0, opts); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.options()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.options()); }
Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.options()); }
Tensor scalar_tensor(double value, TensorOptions opts) { return full({}, value, opts); }

namespace {

// Host f64 or i64 values into a new tensor of opts.dtype on opts.device.
template <class T>
Tensor from_host(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  KILN_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
             values.size(), " values for shape ", shape_str(shape));
  Tensor host = Tensor::empty(shape, {dtype_of<T>::value, kCPU});
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  Tensor out = host.to(opts.dtype).to(opts.device);
  if (opts.requires_grad) out.requires_grad_(true);
  return out;
}

}  // namespace

Tensor from_vector(const std::vector<double>& values, const Shape& shape, TensorOptions opts) {
  return from_host(values, shape, opts);
}
Tensor from_vector(const std::vector<float>& values, const Shape& shape, TensorOptions opts) {
  return from_host(values, shape, opts);
}
Tensor from_vector(const std::vector<int64_t>& values, const Shape& shape, TensorOptions opts) {
  return from_host(values, shape, opts);
}

Tensor arange(double start, double end, double step, TensorOptions opts) {
  KILN_CHECK(step != 0 && (end - start) / step >= 0, "arange: bad range [", start, ", ", end,
             ") with step ", step);
  const auto n = static_cast<int64_t>(std::ceil((end - start) / step));
  std::vector<double> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = start + static_cast<double>(i) * step;
  return from_vector(values, {n}, opts);
}

Tensor arange(int64_t end, TensorOptions opts) { return arange(0.0, static_cast<double>(end), 1.0, opts); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.shape() == b.shape(), "max_abs_diff: ", a.meta_str(), " vs ", b.meta_str());
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = std::abs(va[i] - vb[i]);
    if (std::isnan(d)) return d;
    m = std::max(m, d);
  }
  return m;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape()) return false;
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i)
    if (!(std::abs(va[i] - vb[i]) <= atol + rtol * std::abs(vb[i]))) return false;
  return true;
}

}  // namespace kiln
