// The batched attention backend's fused softmax (core/dispatch/attention.h): the scores
// [BH, Tq, Tk] come from a cuBLASLt strided-batched GEMM (bmm), and this kernel applies the
// 1/sqrt(D) scale, the causal mask and the softmax in one pass over each row instead of three
// elementwise ops over T^2 elements. One warp per row; arithmetic in opmath_t (f32 for bf16 and
// f16, f64 for f64). The flash kernels are in flash_attention.cu.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/attention.h"
#include "kernels/cuda/block_reduce.cuh"

namespace kiln {
namespace {

using cuda::kWarp;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }

// Row r of [BH * Tq, Tk] is query r % Tq; causal keeps keys 0..r % Tq.
template <class T>
__global__ void attention_softmax_kernel(T* __restrict__ probs, const T* __restrict__ scores, int64_t rows,
                                         int Tq, int Tk, bool causal, opmath_t<T> scale) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; row < rows;
       row += warps) {
    const T* x = scores + row * Tk;
    T* y = probs + row * Tk;
    const int visible = causal ? static_cast<int>(row % Tq) + 1 : Tk;
    A m = -INFINITY;
    for (int c = lane; c < visible; c += kWarp) m = max(m, static_cast<A>(x[c]) * scale);
    m = cuda::warp_reduce_max(m);
    A s = 0;
    for (int c = lane; c < visible; c += kWarp) s += exp_(static_cast<A>(x[c]) * scale - m);
    s = cuda::warp_reduce_sum(s);
    const A inv = A(1) / s;
    for (int c = lane; c < Tk; c += kWarp)
      y[c] = static_cast<T>(c < visible ? exp_(static_cast<A>(x[c]) * scale - m) * inv : A(0));
  }
}

// grad_scores = scale * p * (g - sum(g * p)); masked entries have p = 0 and get 0.
template <class T>
__global__ void attention_softmax_backward_kernel(T* __restrict__ gs, const T* __restrict__ gp,
                                                  const T* __restrict__ p, int64_t rows, int Tk,
                                                  opmath_t<T> scale) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; row < rows;
       row += warps) {
    const int64_t base = row * Tk;
    A dot = 0;
    for (int c = lane; c < Tk; c += kWarp) dot += static_cast<A>(gp[base + c]) * static_cast<A>(p[base + c]);
    dot = cuda::warp_reduce_sum(dot);
    for (int c = lane; c < Tk; c += kWarp) {
      const A pc = static_cast<A>(p[base + c]);
      gs[base + c] = static_cast<T>(scale * pc * (static_cast<A>(gp[base + c]) - dot));
    }
  }
}

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
