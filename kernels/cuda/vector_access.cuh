// 16-byte vector loads and stores for the row kernels of the transformer ops
// (kernels/cuda/{layernorm,embedding,classifier,softmax}.cu): kVec elements of T per access,
// converted to and from the arithmetic type A.
#pragma once

// Host-compilable for the CPU emulation of the kernels (tests/cuda_emulation.h), which
// stands in for the CUDA runtime there.
#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace kiln::cuda {

template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements [i * kVec, (i + 1) * kVec) of p, converted to A.
template <int kVec, class T, class A>
__device__ __forceinline__ void load_vec(const T* p, int64_t i, A (&out)[kVec]) {
  const Vec<T, kVec> chunk = reinterpret_cast<const Vec<T, kVec>*>(p)[i];
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = static_cast<A>(chunk.v[k]);
}

template <int kVec, class T, class A>
__device__ __forceinline__ void store_vec(T* p, int64_t i, const A (&in)[kVec]) {
  Vec<T, kVec> chunk;
#pragma unroll
  for (int k = 0; k < kVec; ++k) chunk.v[k] = static_cast<T>(in[k]);
  reinterpret_cast<Vec<T, kVec>*>(p)[i] = chunk;
}

// 16 / sizeof(T) when rows of `cols` elements at every pointer start 16-byte aligned, else 1.
template <class T>
int vec_width(int64_t cols, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = sizeof(T) >= 16 ? 1 : static_cast<int>(16 / sizeof(T));
  if (cols % kVec != 0) return 1;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return kVec;
}

// Calls f(std::integral_constant<int, kVec>) for the width vec_width chose.
template <class T, class F>
void with_vec_width(int vec, F&& f) {
  constexpr int kVec = sizeof(T) >= 16 ? 1 : static_cast<int>(16 / sizeof(T));
  if (vec == kVec) f(std::integral_constant<int, kVec>{});
  else f(std::integral_constant<int, 1>{});
}

}  // namespace kiln::cuda
