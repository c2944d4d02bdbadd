// Warp and block reductions shared by the CUDA kernels (reduce, softmax, norm).
//
// A warp combines its 32 values in a butterfly of xor shuffles, so every lane ends with the
// result; a block then combines one result per warp, in warp order, through shared memory.
// The order depends only on the block size, never on timing: results are bitwise the same on
// every run (no atomics). Blocks are 1-D with a multiple of 32 threads, and every thread of
// the block must call a block reduction.
//
// A value type other than a built-in number (a struct of partial statistics) brings its own
// shfl_xor(V, int mask) overload next to the type, where argument-dependent lookup finds it.
#pragma once

// Host-compilable for the CPU emulation of the kernels (tests/cuda_emulation.h), which
// stands in for the CUDA runtime there.
#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

namespace kiln::cuda {

constexpr int kWarp = 32;

struct SumOf {
  template <class V>
  __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
};

// a > b ? a : b, as written. Not symmetric in NaN (a NaN in b wins, one in a does not), so
// lanes may disagree when a value is NaN; a reduction where NaN must win passes its own combine.
struct MaxOf {
  template <class V>
  __device__ __forceinline__ V operator()(V a, V b) const { return a > b ? a : b; }
};

template <class V>
__device__ __forceinline__ V shfl_xor(V v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}

// Every lane ends with combine() folded over the warp's 32 values.
template <class V, class Combine>
__device__ __forceinline__ V warp_reduce(V v, Combine combine) {
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask >>= 1) v = combine(v, shfl_xor(v, mask));
  return v;
}

template <class V>
__device__ __forceinline__ V warp_reduce_sum(V v) {
  return warp_reduce(v, SumOf{});
}

template <class V>
__device__ __forceinline__ V warp_reduce_max(V v) {
  return warp_reduce(v, MaxOf{});
}

// Every thread ends with combine() folded over the block's values: warp 0 folds the per-warp
// results and its lane 0's value is handed to all, so every thread holds the same bits even
// when combine() is not symmetric. `scratch` is shared memory with one slot per warp of the
// block (kWarp slots fit any block); consecutive calls may share it.
template <class V, class Combine>
__device__ V block_reduce(V v, Combine combine, V identity, V* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_reduce(v, combine);
  __syncthreads();  // every reader of the previous call's scratch is done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_reduce(lane < blockDim.x / kWarp ? scratch[lane] : identity, combine);
    __syncwarp();  // warp 0 has read every slot before lane 0 reuses slot 0 for the result
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

template <class V>
__device__ V block_reduce_sum(V v, V* scratch) {
  return block_reduce(v, SumOf{}, V(0), scratch);
}

}  // namespace kiln::cuda
