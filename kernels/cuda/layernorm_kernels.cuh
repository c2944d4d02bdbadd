// The CUDA layer norm kernels, included by layernorm.cu, which dispatches and launches them,
// and by tests/test_transformer_kernels_emulated.cpp, which runs them on the CPU under a host
// emulation of blocks, threads, shared memory and warp shuffles (tests/cuda_emulation.h). The
// launch geometry (grid, block and shared-memory sizes) is here too, so both launch them alike.
//
//   forward    one warp per row: the first pass reads x (and the residual, writing their
//              sum), the next two re-read the row from L1/L2 for the variance (two passes,
//              like the CPU kernel, so a large mean does not cancel) and for the output.
//              16-byte vector access when rows are aligned.
//   backward   one warp per row for dx (its two row sums by warp shuffles). The weight and
//              bias gradients are column sums. Rows that fit (up to 1024 columns on the
//              vector path: GPT-2 small and medium) take one pass: each lane keeps its
//              columns' partial sums in registers over the rows its warp visits, the warps
//              of a block add theirs into shared memory in warp order, and each block writes
//              one partial row. Wider rows take a second kernel in which each thread owns a
//              column and walks a chunk of rows. Either way one thread per column then adds
//              the partial rows in order. Fixed orders throughout, no atomics: the same bits
//              on every run on one device.
// Arithmetic in opmath_t: f32 for bf16/f16, whose results are stored back in their dtype.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "core/half.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/vector_access.cuh"

#ifndef KILN_DYNAMIC_SHARED
#define KILN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace kiln::layernorm_kernels {

using cuda::kWarp;
using cuda::load_vec;
using cuda::store_vec;

// ------------------------------------------------------------------ launch geometry
// The row kernels (forward, dx): one warp per row, grid-stride loops past kMaxBlocks.
constexpr int kWarpsPerBlock = 4;
constexpr int kRowThreads = kWarpsPerBlock * kWarp;
constexpr int64_t kMaxBlocks = 1 << 20;

inline unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, kMaxBlocks));
}

// The one-pass backward: a fixed grid (2 blocks of 8 warps per SM), so the order of the sums
// depends only on the shape and the device. One partial row per block.
constexpr int kFusedWarps = 8;
constexpr int kFusedThreads = kFusedWarps * kWarp;

inline int64_t fused_backward_blocks(int64_t rows, int64_t sms) {
  return std::clamp<int64_t>((rows + kFusedWarps - 1) / kFusedWarps, 1, 2 * sms);
}

template <class A>
std::size_t fused_backward_shared_bytes(int64_t cols) {
  return 2 * static_cast<std::size_t>(cols) * sizeof(A);
}

// The column kernels (parameter partials, their sum): one thread per column.
constexpr int kColumnThreads = 256;

inline int64_t column_blocks(int64_t cols) { return (cols + kColumnThreads - 1) / kColumnThreads; }

// Chunks of rows for the parameter partials: enough to give every SM a few blocks.
inline int64_t param_chunks(int64_t rows, int64_t cols, int64_t sms) {
  const int64_t col_blocks = column_blocks(cols);
  return std::clamp<int64_t>((4 * sms + col_blocks - 1) / col_blocks, 1, std::min<int64_t>(rows, 65535));
}

// ------------------------------------------------------------------ kernels
__device__ __forceinline__ float rsqrt_(float x) { return rsqrtf(x); }
__device__ __forceinline__ double rsqrt_(double x) { return 1.0 / ::sqrt(x); }

// ------------------------------------------------------------------ forward
template <class T, int kVec>
__global__ void layer_norm_kernel(T* __restrict__ y, opmath_t<T>* __restrict__ mean,
                                  opmath_t<T>* __restrict__ rstd, T* sum, const T* x,
                                  const T* __restrict__ residual,
                                  const opmath_t<T>* __restrict__ weight,
                                  const opmath_t<T>* __restrict__ bias, int64_t rows, int64_t cols,
                                  opmath_t<T> eps) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = blockDim.x / kWarp;
  const int64_t nvec = cols / kVec;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / kWarp; row < rows; row += gridDim.x * warps) {
    const T* xr = x + row * cols;
    // Pass 1: the sum (rounded to T and stored, when there is a residual) and its total.
    A s = 0;
    if (residual) {
      T* sr = sum + row * cols;
      const T* rr = residual + row * cols;
      for (int64_t i = lane; i < nvec; i += kWarp) {
        A a[kVec], b[kVec];
        load_vec<kVec>(xr, i, a);
        load_vec<kVec>(rr, i, b);
        cuda::Vec<T, kVec> out;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          out.v[k] = static_cast<T>(a[k] + b[k]);
          s += static_cast<A>(out.v[k]);  // what is stored is what is normalised
        }
        reinterpret_cast<cuda::Vec<T, kVec>*>(sr)[i] = out;
      }
      xr = sr;  // this lane re-reads only the elements it wrote (so x and sum are not __restrict__)
    } else {
      for (int64_t i = lane; i < nvec; i += kWarp) {
        A a[kVec];
        load_vec<kVec>(xr, i, a);
#pragma unroll
        for (int k = 0; k < kVec; ++k) s += a[k];
      }
    }
    const A m = cuda::warp_reduce_sum(s) / static_cast<A>(cols);
    // Pass 2: the biased variance around that mean.
    A sq = 0;
    for (int64_t i = lane; i < nvec; i += kWarp) {
      A a[kVec];
      load_vec<kVec>(xr, i, a);
#pragma unroll
      for (int k = 0; k < kVec; ++k) sq += (a[k] - m) * (a[k] - m);
    }
    const A rs = rsqrt_(cuda::warp_reduce_sum(sq) / static_cast<A>(cols) + eps);
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = rs;
    }
    // Pass 3: normalise, scale and shift.
    T* yr = y + row * cols;
    for (int64_t i = lane; i < nvec; i += kWarp) {
      A a[kVec];
      load_vec<kVec>(xr, i, a);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t c = i * kVec + k;
        a[k] = (a[k] - m) * rs * (weight ? weight[c] : A(1)) + (bias ? bias[c] : A(0));
      }
      store_vec<kVec>(yr, i, a);
    }
  }
}

// ------------------------------------------------------------------ backward: dx
// dx = rstd * (wdy - mean(wdy) - xhat * mean(wdy * xhat)), wdy = weight * dy.

// Adds vector group i of a row to the lane's sums of wdy (s) and wdy * xhat (sx).
template <class T, int kVec>
__device__ __forceinline__ void add_dx_sums(const T* __restrict__ xr, const T* __restrict__ dyr,
                                            const opmath_t<T>* __restrict__ weight, int64_t i, opmath_t<T> m,
                                            opmath_t<T> rs, opmath_t<T>& s, opmath_t<T>& sx) {
  using A = opmath_t<T>;
  A a[kVec], g[kVec];
  load_vec<kVec>(xr, i, a);
  load_vec<kVec>(dyr, i, g);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const A wdy = g[k] * (weight ? weight[i * kVec + k] : A(1));
    s += wdy;
    sx += wdy * (a[k] - m) * rs;
  }
}

template <class T, int kVec>
__global__ void layer_norm_dx_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                                     const opmath_t<T>* __restrict__ mean, const opmath_t<T>* __restrict__ rstd,
                                     const opmath_t<T>* __restrict__ weight, int64_t rows, int64_t cols) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = blockDim.x / kWarp;
  const int64_t nvec = cols / kVec;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / kWarp; row < rows; row += gridDim.x * warps) {
    const T* xr = x + row * cols;
    const T* dyr = dy + row * cols;
    const A m = mean[row], rs = rstd[row];
    A s = 0, sx = 0;
    for (int64_t i = lane; i < nvec; i += kWarp) add_dx_sums<T, kVec>(xr, dyr, weight, i, m, rs, s, sx);
    const A mean_wdy = cuda::warp_reduce_sum(s) / static_cast<A>(cols);
    const A mean_wdy_xhat = cuda::warp_reduce_sum(sx) / static_cast<A>(cols);
    T* dxr = dx + row * cols;
    for (int64_t i = lane; i < nvec; i += kWarp) {
      A a[kVec], g[kVec];
      load_vec<kVec>(xr, i, a);
      load_vec<kVec>(dyr, i, g);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const A wdy = g[k] * (weight ? weight[i * kVec + k] : A(1));
        a[k] = rs * (wdy - mean_wdy - (a[k] - m) * rs * mean_wdy_xhat);
      }
      store_vec<kVec>(dxr, i, a);
    }
  }
}

// ------------------------------------------------------------------ backward: one pass
// dx as above, and per block one partial row of the weight and bias gradients. Lane l of a
// warp owns vector groups l, l + 32, ..., l + 32 * (kGroups - 1) of every row it visits.
// Needs 2 * cols * sizeof(A) bytes of dynamic shared memory.
template <class T, int kVec, int kGroups>
__global__ void layer_norm_backward_fused_kernel(T* __restrict__ dx, opmath_t<T>* __restrict__ part_w,
                                                 opmath_t<T>* __restrict__ part_b, const T* __restrict__ dy,
                                                 const T* __restrict__ x, const opmath_t<T>* __restrict__ mean,
                                                 const opmath_t<T>* __restrict__ rstd,
                                                 const opmath_t<T>* __restrict__ weight, int64_t rows,
                                                 int64_t cols) {
  using A = opmath_t<T>;
  KILN_DYNAMIC_SHARED(unsigned char, shared_raw);
  A* shared_w = reinterpret_cast<A*>(shared_raw);
  A* shared_b = shared_w + cols;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const int64_t nvec = cols / kVec;
  A acc_w[kGroups][kVec] = {}, acc_b[kGroups][kVec] = {};
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const T* xr = x + row * cols;
    const T* dyr = dy + row * cols;
    const A m = mean[row], rs = rstd[row];
    A s = 0, sx = 0;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t i = lane + g * kWarp;
      if (i >= nvec) break;
      add_dx_sums<T, kVec>(xr, dyr, weight, i, m, rs, s, sx);
    }
    const A mean_wdy = cuda::warp_reduce_sum(s) / static_cast<A>(cols);
    const A mean_wdy_xhat = cuda::warp_reduce_sum(sx) / static_cast<A>(cols);
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t i = lane + g * kWarp;
      if (i >= nvec) break;
      A a[kVec], d[kVec];
      load_vec<kVec>(xr, i, a);
      load_vec<kVec>(dyr, i, d);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const A xhat = (a[k] - m) * rs;
        const A wdy = d[k] * (weight ? weight[i * kVec + k] : A(1));
        acc_w[g][k] += d[k] * xhat;
        acc_b[g][k] += d[k];
        a[k] = rs * (wdy - mean_wdy - xhat * mean_wdy_xhat);
      }
      if (dx) store_vec<kVec>(dx + row * cols, i, a);
    }
  }
  // The block's warps add their partial sums in warp order.
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) shared_w[c] = shared_b[c] = A(0);
  __syncthreads();
  for (int w = 0; w < warps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int64_t i = lane + g * kWarp;
        if (i >= nvec) break;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          shared_w[i * kVec + k] += acc_w[g][k];
          shared_b[i * kVec + k] += acc_b[g][k];
        }
      }
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    if (part_w) part_w[blockIdx.x * cols + c] = shared_w[c];
    if (part_b) part_b[blockIdx.x * cols + c] = shared_b[c];
  }
}

// Calls f(std::integral_constant<int, kGroups>) with the fewest vector groups per lane
// (1, 2, 4 or 8) that cover nvec, among the counts whose per-lane sums (2 * kGroups * kVec
// values) fit in 64 registers; returns false when none does (a row too wide for one pass).
template <int kVec, int kGroups = 1, class F>
bool with_groups(int64_t nvec, F&& f) {
  if constexpr (2 * kGroups * kVec > 64) {
    return false;
  } else {
    if (nvec <= int64_t{kWarp} * kGroups) {
      f(std::integral_constant<int, kGroups>{});
      return true;
    }
    if constexpr (kGroups < 8) return with_groups<kVec, kGroups * 2>(nvec, f);
    else return false;
  }
}

// ------------------------------------------------------------------ backward: dweight, dbias
// Partial column sums over one chunk of rows: thread (column c, chunk blockIdx.y) adds
// dy * xhat and dy down rows [chunk * rows_per_chunk, ...) in order.
template <class T>
__global__ void layer_norm_param_partials_kernel(opmath_t<T>* __restrict__ part_w, opmath_t<T>* __restrict__ part_b,
                                                 const T* __restrict__ dy, const T* __restrict__ x,
                                                 const opmath_t<T>* __restrict__ mean,
                                                 const opmath_t<T>* __restrict__ rstd, int64_t rows,
                                                 int64_t cols, int64_t rows_per_chunk) {
  using A = opmath_t<T>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  A sw = 0, sb = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const A g = static_cast<A>(dy[r * cols + c]);
    sw += g * (static_cast<A>(x[r * cols + c]) - mean[r]) * rstd[r];
    sb += g;
  }
  if (part_w) part_w[blockIdx.y * cols + c] = sw;
  if (part_b) part_b[blockIdx.y * cols + c] = sb;
}

// out[c] = sum over chunks k (in order) of part[k * cols + c].
template <class A>
__global__ void sum_partials_kernel(A* __restrict__ out, const A* __restrict__ part, int64_t chunks,
                                    int64_t cols) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  A s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += part[k * cols + c];
  out[c] = s;
}

}  // namespace kiln::layernorm_kernels
