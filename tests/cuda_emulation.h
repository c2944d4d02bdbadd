// Runs simple CUDA kernels on the CPU, for the tests of kernel logic on machines without a GPU:
// each block's threads are std::threads sharing one dynamic shared-memory buffer, and
// __syncthreads is a std::barrier across them; __shfl_xor_sync exchanges values through a
// per-warp buffer between two barriers of the warp's 32 threads. Enough for kernels that use
// threadIdx, blockIdx, blockDim, gridDim, dynamic shared memory (KILN_DYNAMIC_SHARED), static
// shared arrays (KILN_STATIC_SHARED), __syncthreads, full-warp __syncwarp and xor shuffles,
// rsqrtf and the libm float functions; not for atomics, other shuffles or tensor cores. Include
// before the kernel header, and never in a translation unit that includes the CUDA headers.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__

namespace kiln::testing::cuda_emulation {

}  // namespace kiln::testing::cuda_emulation

// CUDA's 16-byte vector type (the kernels read shared memory through it).
struct alignas(16) float4 {
  float x, y, z, w;
};

namespace kiln::testing::cuda_emulation {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local Dim3 thread_idx, block_idx;
inline Dim3 block_dim, grid_dim;
inline thread_local float* shared_memory = nullptr;
// Static __shared__ arrays: every thread of a block declares them in the same order, so each
// takes the next slice of one per-block buffer and all threads get the same address.
constexpr std::size_t kStaticSharedBytes = 16 * 1024;
inline thread_local float4* static_shared_memory = nullptr;
inline thread_local std::size_t static_shared_used = 0;
inline thread_local std::barrier<>* block_barrier = nullptr;

struct Warp {
  std::barrier<> barrier{32};
  double lanes[32] = {};
};
inline thread_local Warp* warp = nullptr;

// Runs kernel() for every thread of a grid of grid.x * grid.y blocks of `threads` threads, one
// block at a time, on the same `threads` std::threads (starting threads is what costs). Shared
// memory starts each block as NaN, so a read before any write in that block shows up.
template <class Kernel>
void launch(Dim3 grid, unsigned threads, std::size_t shared_bytes, const Kernel& kernel) {
  grid_dim = grid;
  block_dim = {threads, 1, 1};
  std::vector<float4> smem(shared_bytes / sizeof(float4) + 1);  // 16-byte aligned, like CUDA's
  std::vector<float4> static_smem(kStaticSharedBytes / sizeof(float4));
  auto poison = [&]() noexcept {
    for (std::vector<float4>* m : {&smem, &static_smem})
      std::fill_n(reinterpret_cast<float*>(m->data()), m->size() * 4, std::numeric_limits<float>::quiet_NaN());
  };
  poison();
  std::barrier<> barrier(threads);
  std::barrier<decltype(poison)> block_done(threads, poison);  // the last thread out refills
  std::vector<Warp> warps((threads + 31) / 32);
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      thread_idx = {t, 0, 0};
      shared_memory = reinterpret_cast<float*>(smem.data());
      static_shared_memory = static_smem.data();
      block_barrier = &barrier;
      warp = &warps[t / 32];
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          block_idx = {bx, by, 0};
          static_shared_used = 0;
          kernel();
          block_done.arrive_and_wait();
        }
      }
    });
  }
  for (std::thread& th : pool) th.join();
}

// The calling thread's slice of n T for a static __shared__ T name[n], 16-byte aligned.
template <class T>
T* static_shared(std::size_t n) {
  const std::size_t offset = static_shared_used;
  static_shared_used += (n * sizeof(T) + sizeof(float4) - 1) / sizeof(float4) * sizeof(float4);
  if (static_shared_used > kStaticSharedBytes) std::abort();  // raise kStaticSharedBytes
  return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(static_shared_memory) + offset);
}

}  // namespace kiln::testing::cuda_emulation

#define threadIdx ::kiln::testing::cuda_emulation::thread_idx
#define blockIdx ::kiln::testing::cuda_emulation::block_idx
#define blockDim ::kiln::testing::cuda_emulation::block_dim
#define gridDim ::kiln::testing::cuda_emulation::grid_dim
#define KILN_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::kiln::testing::cuda_emulation::shared_memory)
#define KILN_STATIC_SHARED(type, name, n) type* name = ::kiln::testing::cuda_emulation::static_shared<type>(n)
inline void __syncthreads() { ::kiln::testing::cuda_emulation::block_barrier->arrive_and_wait(); }
// Every lane of the warp must call it (the kernels use only the full mask).
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { ::kiln::testing::cuda_emulation::warp->barrier.arrive_and_wait(); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// Every lane of the warp must call it, as on the GPU with a full mask.
template <class V>
V __shfl_xor_sync(unsigned /*mask*/, V v, int lane_mask) {
  auto* w = ::kiln::testing::cuda_emulation::warp;
  const unsigned lane = threadIdx.x % 32;
  w->lanes[lane] = static_cast<double>(v);
  w->barrier.arrive_and_wait();
  const V other = static_cast<V>(w->lanes[lane ^ static_cast<unsigned>(lane_mask)]);
  w->barrier.arrive_and_wait();
  return other;
}
