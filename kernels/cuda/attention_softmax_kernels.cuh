// The batched attention backend's fused softmax kernels, included by attention.cu, which
// launches them, and by tests/test_attention_kernels_emulated.cpp, which runs them on the CPU
// under a host emulation of threads, warps and shuffles (tests/cuda_emulation.h).
//
// The scores [BH, Tq, Tk] come from a cuBLASLt strided-batched GEMM (bmm); the forward applies
// the 1/sqrt(D) scale, the causal mask and the softmax in one pass over each row instead of
// three elementwise ops over T^2 elements. One warp per row, rows strided by the grid's warps;
// arithmetic in opmath_t (f32 for bf16 and f16, f64 for f64). Lanes combine their partial max
// and sum in a butterfly of xor shuffles, so the result does not depend on timing.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "core/half.h"

namespace kiln::attention_kernels {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, mask);
  return v;
}

template <class A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) {
    const A other = __shfl_xor_sync(0xffffffffu, v, mask);
    v = other > v ? other : v;
  }
  return v;
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }

// probs = softmax(scale * scores + mask) per row. Row r of [BH * Tq, Tk] is query r % Tq;
// causal keeps keys 0..r % Tq (and needs Tq == Tk).
template <class T>
__global__ void attention_softmax_kernel(T* __restrict__ probs, const T* __restrict__ scores,
                                         int64_t rows, int Tq, int Tk, bool causal, opmath_t<T> scale) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / kWarp; row < rows;
       row += warps) {
    const T* x = scores + row * Tk;
    T* y = probs + row * Tk;
    const int visible = causal ? static_cast<int>(row % Tq) + 1 : Tk;
    A m = -INFINITY;
    for (int c = lane; c < visible; c += kWarp) {
      const A v = static_cast<A>(x[c]) * scale;
      m = v > m ? v : m;
    }
    m = warp_max(m);
    A s = 0;
    for (int c = lane; c < visible; c += kWarp) s += exp_(static_cast<A>(x[c]) * scale - m);
    s = warp_sum(s);
    const A inv = A(1) / s;
    for (int c = lane; c < Tk; c += kWarp)
      y[c] = static_cast<T>(c < visible ? exp_(static_cast<A>(x[c]) * scale - m) * inv : A(0));
  }
}

// grad_scores = scale * p * (g - sum(g * p)) per row; masked entries have p = 0 and get 0.
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
    dot = warp_sum(dot);
    for (int c = lane; c < Tk; c += kWarp) {
      const A pc = static_cast<A>(p[base + c]);
      gs[base + c] = static_cast<T>(scale * pc * (static_cast<A>(gp[base + c]) - dot));
    }
  }
}

}  // namespace kiln::attention_kernels
