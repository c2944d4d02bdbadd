// CUDA dropout (core/dispatch/dropout.h). One thread per Philox block: the block gives the
// four words of elements 4b .. 4b+3, so each thread computes one block and masks four
// elements, exactly as the CPU kernel does, and both drop the same elements.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/dropout.h"
#include "core/philox.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void dropout_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t n,
                               uint64_t seed, uint64_t offset, uint32_t threshold,
                               opmath_t<T> scale) {
  using A = opmath_t<T>;
  const Philox4x32 philox(seed);
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < blocks;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxWords words = philox.block(static_cast<uint64_t>(b), offset);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * b + k;
      if (i >= n) break;
      // A multiply rather than a select: a NaN or inf input stays visible, as in PyTorch.
      const A factor = (words.w[k] >> 8) < threshold ? A(0) : scale;
      out[i] = static_cast<T>(static_cast<A>(in[i]) * factor);
    }
  }
}

void dropout_cuda(Tensor& out, const Tensor& in, uint64_t seed, uint64_t offset, uint32_t threshold,
                  double scale) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous() && in.dtype() == out.dtype() &&
                 in.numel() == out.numel() && in.device() == out.device(),
             "dropout kernel: ", in.meta_str(), " -> ", out.meta_str());
  const int64_t n = in.numel();
  if (n == 0) return;
  cuda::DeviceGuard guard(in.device().index);
  KILN_DISPATCH_FLOATING(in.dtype(), "dropout", [&] {
    using A = opmath_t<scalar_t>;
    dropout_kernel<scalar_t><<<cuda::grid_for((n + 3) / 4, kThreads), kThreads, 0,
                               cuda::current_stream()>>>(
        static_cast<scalar_t*>(out.data_ptr()), static_cast<const scalar_t*>(in.data_ptr()), n,
        seed, offset, threshold, static_cast<A>(scale));
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

KILN_REGISTER_KERNEL(dropout_stub, CUDA, &dropout_cuda);

}  // namespace kiln
