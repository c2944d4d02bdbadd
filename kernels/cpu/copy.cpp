// CPU copy (with dtype conversion) and fill over any strides.
#include "core/dispatch/copy.h"
#include "core/elementwise_layout.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 16;

template <class To, class From>
To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) return static_cast<opmath_t<From>>(v) != 0;
  else return static_cast<To>(static_cast<opmath_t<From>>(v));
}

// Loops live in templates, not in dispatch-macro arguments, where #pragma is not allowed.
// The strided path walks rows of the innermost dim: L.offset (a div and mod per dim) once per
// row, not per element, which made strided copies (transposes, .contiguous(), gradient
// clones) several times slower than the memory traffic they need.
template <class To, class From>
void copy_loop(To* out, const From* in, const ElementwiseLayout<2>& L) {
  if (L.numel == 0) return;
  if (L.contiguous) {
#pragma omp parallel for if (L.numel > kParallelGrain)
    for (int64_t i = 0; i < L.numel; ++i) out[i] = convert<To>(in[i]);
    return;
  }
  const int64_t inner = L.ndim > 0 ? L.sizes[0] : 1, rows = L.numel / inner;
  const int64_t so = L.ndim > 0 ? L.strides[0][0] : 0, si = L.ndim > 0 ? L.strides[1][0] : 0;
#pragma omp parallel for if (L.numel > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    To* o = out + L.offset(0, r * inner);
    const From* x = in + L.offset(1, r * inner);
    if (so == 1 && si == 1) {
      for (int64_t j = 0; j < inner; ++j) o[j] = convert<To>(x[j]);
    } else {
      for (int64_t j = 0; j < inner; ++j) o[j * so] = convert<To>(x[j * si]);
    }
  }
}

template <class T>
void fill_loop(T* out, T value, const ElementwiseLayout<1>& L) {
  if (L.numel == 0) return;
  if (L.contiguous) {
#pragma omp parallel for if (L.numel > kParallelGrain)
    for (int64_t i = 0; i < L.numel; ++i) out[i] = value;
    return;
  }
  const int64_t inner = L.ndim > 0 ? L.sizes[0] : 1, rows = L.numel / inner;
  const int64_t stride = L.ndim > 0 ? L.strides[0][0] : 0;
#pragma omp parallel for if (L.numel > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    T* o = out + L.offset(0, r * inner);
    for (int64_t j = 0; j < inner; ++j) o[j * stride] = value;
  }
}

void copy_cpu(Tensor& dst, const Tensor& src) {
  const auto L = make_elementwise_layout<2>({&dst, &src});
  KILN_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using dst_t = scalar_t;
    KILN_DISPATCH_ALL(src.dtype(), "copy", [&] {
      copy_loop(static_cast<dst_t*>(dst.data_ptr()), static_cast<const scalar_t*>(src.data_ptr()), L);
    });
  });
}

void fill_cpu(Tensor& dst, double value) {
  const auto L = make_elementwise_layout<1>({&dst});
  KILN_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    fill_loop(static_cast<scalar_t*>(dst.data_ptr()), convert<scalar_t>(value), L);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(copy_stub, CPU, &copy_cpu);
KILN_REGISTER_KERNEL(fill_stub, CPU, &fill_cpu);

}  // namespace kiln
