// Runs simple CUDA kernels on the CPU, for the tests of kernel logic on machines without a GPU:
// each block's threads are std::threads sharing one dynamic shared-memory buffer, and
// __syncthreads is a std::barrier across them; __shfl_xor_sync exchanges values through a
// per-warp buffer between two barriers of the warp's 32 threads. Enough for kernels that use
// threadIdx, blockIdx, blockDim, gridDim, dynamic shared memory (KILN_DYNAMIC_SHARED),
// __syncthreads, full-warp xor shuffles and the libm float functions; not for atomics, other
// shuffles or tensor cores. Include before the
// kernel header, and never in a translation unit that includes the CUDA headers.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
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
inline thread_local std::barrier<>* block_barrier = nullptr;

struct Warp {
  std::barrier<> barrier{32};
  double lanes[32] = {};
};
inline thread_local Warp* warp = nullptr;

// Runs kernel() for every thread of a grid of grid.x * grid.y blocks of `threads` threads, one
// block at a time. Shared memory starts as NaN, so a read before any write shows up.
template <class Kernel>
void launch(Dim3 grid, unsigned threads, std::size_t shared_bytes, const Kernel& kernel) {
  grid_dim = grid;
  block_dim = {threads, 1, 1};
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::vector<float4> smem(shared_bytes / sizeof(float4) + 1);  // 16-byte aligned, like CUDA's
      std::fill_n(reinterpret_cast<float*>(smem.data()), smem.size() * 4, std::numeric_limits<float>::quiet_NaN());
      std::barrier<> barrier(threads);
      std::vector<Warp> warps((threads + 31) / 32);
      std::vector<std::thread> block;
      for (unsigned t = 0; t < threads; ++t) {
        block.emplace_back([&, t] {
          thread_idx = {t, 0, 0};
          block_idx = {bx, by, 0};
          shared_memory = reinterpret_cast<float*>(smem.data());
          block_barrier = &barrier;
          warp = &warps[t / 32];
          kernel();
        });
      }
      for (std::thread& th : block) th.join();
    }
  }
}

}  // namespace kiln::testing::cuda_emulation

#define threadIdx ::kiln::testing::cuda_emulation::thread_idx
#define blockIdx ::kiln::testing::cuda_emulation::block_idx
#define blockDim ::kiln::testing::cuda_emulation::block_dim
#define gridDim ::kiln::testing::cuda_emulation::grid_dim
#define KILN_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::kiln::testing::cuda_emulation::shared_memory)
inline void __syncthreads() { ::kiln::testing::cuda_emulation::block_barrier->arrive_and_wait(); }

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
