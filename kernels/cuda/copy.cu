// CUDA copy (with dtype conversion) and fill: grid-stride loops over any strides, with a
// contiguous fast path that needs no index arithmetic.
#include "core/cuda_context.h"
#include "core/dispatch/copy.h"
#include "core/elementwise_layout.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

template <class To, class From>
__device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) return static_cast<opmath_t<From>>(v) != 0;
  else return static_cast<To>(static_cast<opmath_t<From>>(v));
}

template <class To, class From>
__global__ void copy_contiguous_kernel(To* __restrict__ out, const From* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = convert<To>(in[i]);
}

template <class To, class From>
__global__ void copy_strided_kernel(To* out, const From* in, ElementwiseLayout<2> L) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < L.numel;
       i += int64_t(gridDim.x) * blockDim.x)
    out[L.offset(0, i)] = convert<To>(in[L.offset(1, i)]);
}

template <class T>
__global__ void fill_kernel(T* out, T value, ElementwiseLayout<1> L) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < L.numel;
       i += int64_t(gridDim.x) * blockDim.x)
    out[L.offset(0, i)] = value;
}

void copy_cuda(Tensor& dst, const Tensor& src) {
  const auto L = make_elementwise_layout<2>({&dst, &src});
  if (L.numel == 0) return;
  cuda::DeviceGuard guard(dst.device().index);
  cudaStream_t stream = cuda::current_stream();
  if (L.contiguous && dst.dtype() == src.dtype()) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), L.numel * dst.element_size(),
                                    cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const unsigned grid = cuda::grid_for(L.numel, kThreads);
  KILN_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using dst_t = scalar_t;
    KILN_DISPATCH_ALL(src.dtype(), "copy", [&] {
      auto* out = static_cast<dst_t*>(dst.data_ptr());
      const auto* in = static_cast<const scalar_t*>(src.data_ptr());
      if (L.contiguous)
        copy_contiguous_kernel<<<grid, kThreads, 0, stream>>>(out, in, L.numel);
      else
        copy_strided_kernel<<<grid, kThreads, 0, stream>>>(out, in, L);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void fill_cuda(Tensor& dst, double value) {
  const auto L = make_elementwise_layout<1>({&dst});
  if (L.numel == 0) return;
  cuda::DeviceGuard guard(dst.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    const scalar_t v = std::is_same_v<scalar_t, bool> ? scalar_t(value != 0) : scalar_t(static_cast<opmath_t<scalar_t>>(value));
    fill_kernel<<<cuda::grid_for(L.numel, kThreads), kThreads, 0, stream>>>(
        static_cast<scalar_t*>(dst.data_ptr()), v, L);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

KILN_REGISTER_KERNEL(copy_stub, CUDA, &copy_cuda);
KILN_REGISTER_KERNEL(fill_stub, CUDA, &fill_cuda);

}  // namespace kiln
