// The CUDA fused classifier kernel (llm.c's fused_classifier), included by classifier.cu,
// which dispatches and launches it, and by tests/test_transformer_kernels_emulated.cpp, which
// runs it on the CPU under a host emulation of blocks, threads, shared memory and warp shuffles
// (tests/cuda_emulation.h). The launch geometry is here too, so both launch it alike.
//
// One block per row. The first pass folds (max, sum of exp(x - max)) over the valid columns in
// one read (an online softmax: a new max rescales the running sum); one block reduction gives
// the row's log-sum-exp, thread 0 writes the loss, and the second pass writes
// dlogits = (softmax - onehot) * grad_scale, zero in the padded columns. Probabilities are
// never stored; without dlogits (evaluation) the second pass is skipped. 16-byte access
// when rows are aligned (GPT-2's padded 50304 columns are).
// A target outside [0, valid) that is not ignore_index gives a NaN loss and NaN gradient
// row: the GPU cannot throw without waiting, and a NaN is loud.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/dtype.h"
#include "core/half.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/cuda/vector_access.cuh"

#ifndef KILN_STATIC_SHARED
#define KILN_STATIC_SHARED(type, name, n) __shared__ type name[n]
#endif

namespace kiln::classifier_kernels {

using cuda::exp_;
using cuda::kWarp;
using cuda::load_vec;
using cuda::log_;
using cuda::MergeSoftmaxStats;
using cuda::SoftmaxStats;
using cuda::store_vec;

// ------------------------------------------------------------------ launch geometry
// One block per row (grid-stride past kMaxBlocks); small rows (tests, tiny vocabularies) do
// not need 512 threads.
constexpr int kMaxThreads = 512;
constexpr int64_t kMaxBlocks = 1 << 20;

inline int64_t classifier_blocks(int64_t rows) { return std::min(rows, kMaxBlocks); }

inline int classifier_threads(int64_t classes) {
  return static_cast<int>(std::clamp<int64_t>((classes / 8 + kWarp - 1) / kWarp * kWarp, kWarp, kMaxThreads));
}

// ------------------------------------------------------------------ kernel
template <class T, class Idx, int kVec>
__global__ void fused_cross_entropy_kernel(opmath_t<T>* __restrict__ losses, T* __restrict__ dlogits,
                                           const T* __restrict__ logits, const Idx* __restrict__ targets,
                                           const opmath_t<T>* __restrict__ grad_scale, int64_t rows,
                                           int64_t classes, int64_t valid, int64_t ignore_index) {
  using A = opmath_t<T>;
  KILN_STATIC_SHARED(SoftmaxStats<A>, scratch, kWarp);
  const int64_t nvec = classes / kVec;
  const A scale = *grad_scale;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = static_cast<int64_t>(targets[row]);
    const T* x = logits + row * classes;
    T* d = dlogits ? dlogits + row * classes : nullptr;
    const bool ignored = t == ignore_index;
    if (ignored || t < 0 || t >= valid) {  // the same branch for the whole block
      A fill[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) fill[k] = ignored ? A(0) : std::numeric_limits<A>::quiet_NaN();
      if (d)
        for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) store_vec<kVec>(d, i, fill);
      if (threadIdx.x == 0) losses[row] = fill[0];
      continue;
    }
    SoftmaxStats<A> st = cuda::empty_softmax_stats<A>();
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (i * kVec + k < valid) add_value(st, v[k]);
    }
    st = cuda::block_reduce(st, MergeSoftmaxStats{}, cuda::empty_softmax_stats<A>(), scratch);
    const A lse = st.max + log_(st.sum_exp);
    if (threadIdx.x == 0) losses[row] = lse - static_cast<A>(x[t]);
    if (!d) continue;  // evaluation: no gradient wanted
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t c = i * kVec + k;
        v[k] = c < valid ? (exp_(v[k] - lse) - (c == t ? A(1) : A(0))) * scale : A(0);
      }
      store_vec<kVec>(d, i, v);
    }
  }
}

}  // namespace kiln::classifier_kernels
