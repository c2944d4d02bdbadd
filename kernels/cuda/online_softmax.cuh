// The online softmax statistics shared by the CUDA softmax / cross-entropy kernels
// (kernels/cuda/softmax.cu) and the fused classifier (kernels/cuda/classifier.cu): a running
// (max, sum of exp(x - max)) over part of a row, folded one value at a time in a single read
// (a new max rescales the running sum) and merged across threads with block_reduce.cuh.
// A row's log-sum-exp is then max + log(sum_exp).
#pragma once

// Host-compilable for the CPU emulation of the kernels (tests/cuda_emulation.h), which
// stands in for the CUDA runtime there.
#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <limits>

#include "kernels/cuda/block_reduce.cuh"

namespace kiln::cuda {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return ::log(x); }

template <class A>
__device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}

template <class A>
struct SoftmaxStats {
  A max;
  A sum_exp;
};

template <class A>
__device__ __forceinline__ SoftmaxStats<A> empty_softmax_stats() {
  return {neg_inf<A>(), A(0)};
}

template <class A>
__device__ __forceinline__ void add_value(SoftmaxStats<A>& s, A v) {
  if (v > s.max) {
    s.sum_exp = s.sum_exp * exp_(s.max - v) + A(1);  // exp(-inf) = 0 for the first value
    s.max = v;
  } else {
    s.sum_exp += v == neg_inf<A>() ? A(0) : exp_(v - s.max);  // NaN propagates
  }
}

// Rescales each part's sum to the larger max.
struct MergeSoftmaxStats {
  template <class A>
  __device__ SoftmaxStats<A> operator()(SoftmaxStats<A> a, SoftmaxStats<A> b) const {
    const A m = a.max > b.max ? a.max : b.max;
    if (m == neg_inf<A>()) return {m, A(0)};
    const A ea = a.max == neg_inf<A>() ? A(0) : a.sum_exp * exp_(a.max - m);
    const A eb = b.max == neg_inf<A>() ? A(0) : b.sum_exp * exp_(b.max - m);
    return {m, ea + eb};
  }
};

// For the warp and block reductions of block_reduce.cuh.
template <class A>
__device__ __forceinline__ SoftmaxStats<A> shfl_xor(SoftmaxStats<A> v, int mask) {
  return {shfl_xor(v.max, mask), shfl_xor(v.sum_exp, mask)};
}

}  // namespace kiln::cuda
