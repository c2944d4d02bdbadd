// The batched attention backend's fused scale+mask+softmax (core/dispatch/attention.h): the
// launchers of the kernels in attention_softmax_kernels.cuh, where they are described. The
// flash kernels are in flash_attention.cu.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/attention.h"
#include "kernels/cuda/attention_softmax_kernels.cuh"

namespace kiln {
namespace {

using attention_kernels::attention_softmax_backward_kernel;
using attention_kernels::attention_softmax_kernel;
using attention_kernels::kWarp;
using attention_kernels::kWarpsPerBlock;

unsigned blocks_for(int64_t rows) {
  return cuda::grid_for((rows + kWarpsPerBlock - 1) / kWarpsPerBlock * kWarpsPerBlock * kWarp,
                        kWarpsPerBlock * kWarp);
}

void attention_softmax(Tensor& probs, const Tensor& scores, bool causal, double scale) {
  const int64_t rows = scores.size(0) * scores.size(1);
  const int64_t Tq = scores.size(1), Tk = scores.size(2);
  KILN_CHECK(Tk <= INT32_MAX && Tq <= INT32_MAX, "attention softmax: scores ", scores.meta_str(), " too long");
  cuda::DeviceGuard guard(scores.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(scores.dtype(), "attention softmax", [&] {
    using T = scalar_t;
    attention_softmax_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
        static_cast<T*>(probs.data_ptr()), static_cast<const T*>(scores.data_ptr()), rows,
        static_cast<int>(Tq), static_cast<int>(Tk), causal, static_cast<opmath_t<T>>(scale));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

void attention_softmax_backward(Tensor& grad_scores, const Tensor& grad_probs, const Tensor& probs,
                                double scale) {
  const int64_t rows = probs.size(0) * probs.size(1), Tk = probs.size(2);
  cuda::DeviceGuard guard(probs.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(probs.dtype(), "attention softmax backward", [&] {
    using T = scalar_t;
    attention_softmax_backward_kernel<T><<<blocks_for(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
        static_cast<T*>(grad_scores.data_ptr()), static_cast<const T*>(grad_probs.data_ptr()),
        static_cast<const T*>(probs.data_ptr()), rows, static_cast<int>(Tk),
        static_cast<opmath_t<T>>(scale));
  });
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace

KILN_REGISTER_KERNEL(attention_softmax_stub, CUDA, &attention_softmax);
KILN_REGISTER_KERNEL(attention_softmax_backward_stub, CUDA, &attention_softmax_backward);

}  // namespace kiln
