// The CUDA flash attention kernels (FlashAttention-2 style), included by flash_attention.cu,
// which launches them, and by tests/test_flash_attention_emulated.cpp, which runs them on the
// CPU under a host emulation of blocks, threads and __syncthreads (tests/cuda_emulation.h) so
// their indexing, masking and synchronisation are checked on machines without a GPU.
//
//   forward   one block per (tile of kRows queries, head), one thread per query row. Key and
//             value tiles of kKeys rows pass through shared memory; each thread keeps a running
//             max m, a running sum l and an unnormalised output row in registers (online
//             softmax), rescaling by exp(m_old - m_new) when the max grows. Causal: key tiles
//             after the block's last query are never loaded. Writes out and lse = m + log(l).
//   backward  delta = rowsum(dO * O); then
//             dK/dV: one block per (tile of kRows keys, head), one thread per key row, walking
//                    query tiles through shared memory and recomputing P = exp(s - lse);
//             dQ:    one block per (tile of kRows queries, head), one thread per query row,
//                    walking key tiles.
//             Every output row has one writer: no atomics, so gradients are deterministic.
//
// The forward and dQ read shared memory 16 bytes (a float4) at a time (dK/dV a float at a
// time, see there). A thread's own row (q in the forward, q and dO in dQ) is padded to D + 4
// floats, so the 8 lanes served together by a 16-byte load, reading the same columns of 8
// consecutive rows, hit 32 different banks; the tile rows every thread reads at once are
// broadcasts.
// Correctness and clarity first: f32 FMAs, no tensor cores.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/half.h"

#ifndef KILN_DYNAMIC_SHARED
#define KILN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace kiln::flash_kernels {

constexpr int kRows = 64;  // threads per block: query (or key) rows a block owns
constexpr int kKeys = 32;  // rows per streamed tile

constexpr int kPad = 4;    // floats after each own row in shared memory (see above)
constexpr int kScalarPad = 1;  // the same for own rows read a float at a time (dK/dV)

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// A compiler barrier at the top of the dQ loop: without it the compiler keeps the thread's own
// shared-memory rows (loop-invariant) in registers, which next to the accumulator row exceeds
// 255 registers and spills; re-reading them is cheaper.
__device__ __forceinline__ void reload_shared_rows() { asm volatile("" ::: "memory"); }

// a . b over D floats; both 16-byte aligned.
template <int D>
__device__ __forceinline__ float dot(const float* a, const float* b) {
  const float4* a4 = reinterpret_cast<const float4*>(a);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float s = 0.f;
#pragma unroll
  for (int d = 0; d < D / 4; ++d) {
    const float4 x = a4[d], y = b4[d];
    s = fmaf(x.x, y.x, s);
    s = fmaf(x.y, y.y, s);
    s = fmaf(x.z, y.z, s);
    s = fmaf(x.w, y.w, s);
  }
  return s;
}

// acc += p * row over D floats (acc in registers, row 16-byte aligned).
template <int D>
__device__ __forceinline__ void axpy(float* acc, float p, const float* row) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll
  for (int d = 0; d < D / 4; ++d) {
    const float4 x = r4[d];
    acc[4 * d] = fmaf(p, x.x, acc[4 * d]);
    acc[4 * d + 1] = fmaf(p, x.y, acc[4 * d + 1]);
    acc[4 * d + 2] = fmaf(p, x.z, acc[4 * d + 2]);
    acc[4 * d + 3] = fmaf(p, x.w, acc[4 * d + 3]);
  }
}

// rows [row0, row0 + n) of a [T, D] matrix into dst (row stride ld), as f32 times `mul`; rows
// past T are zero.
template <class T, int D>
__device__ void load_rows(float* dst, int ld, const T* src, int row0, int n, int T_, float mul = 1.f) {
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    dst[r * ld + d] = row0 + r < T_ ? static_cast<float>(src[static_cast<int64_t>(row0 + r) * D + d]) * mul : 0.f;
  }
}

// Dynamic shared memory of each kernel, in bytes (the layouts are at the top of each kernel).
template <int D>
constexpr size_t forward_smem_bytes() {
  return sizeof(float) * (kRows * (D + kPad) + 2 * kKeys * D);
}
template <int D>
constexpr size_t dkdv_smem_bytes() {
  return sizeof(float) * (2 * kRows * (D + kScalarPad) + 2 * kKeys * D + 2 * kKeys);
}
template <int D>
constexpr size_t dq_smem_bytes() {
  return sizeof(float) * (2 * kRows * (D + kPad) + 2 * kKeys * D);
}

// ------------------------------------------------------------------ forward
template <class T, int D>
__global__ void __launch_bounds__(kRows)
    flash_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                         const T* __restrict__ k, const T* __restrict__ v, int Tq, int Tk, bool causal,
                         float scale) {
  KILN_DYNAMIC_SHARED(float, smem);
  float* q_s = smem;                      // [kRows][D + kPad], pre-scaled
  float* k_s = q_s + kRows * (D + kPad);  // [kKeys][D]
  float* v_s = k_s + kKeys * D;        // [kKeys][D]
  const int64_t h = blockIdx.y;
  const int i0 = blockIdx.x * kRows, r = threadIdx.x, i = i0 + r;
  q += h * Tq * D;
  k += h * Tk * D;
  v += h * Tk * D;
  load_rows<T, D>(q_s, D + kPad, q, i0, kRows, Tq, scale);
  const float* qr = q_s + r * (D + kPad);

  float acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  // Keys this row sees: [0, row_end); the block needs keys up to its last row's.
  const int row_end = i >= Tq ? 0 : causal ? i + 1 : Tk;
  const int key_end = causal ? imin(Tk, i0 + kRows) : Tk;
  for (int j0 = 0; j0 < key_end; j0 += kKeys) {
    __syncthreads();  // everyone is done with the previous tile
    load_rows<T, D>(k_s, D, k, j0, kKeys, Tk);
    load_rows<T, D>(v_s, D, v, j0, kKeys, Tk);
    __syncthreads();
    const int visible = imin(kKeys, row_end - j0);
    if (visible <= 0) continue;
    float s[kKeys];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < kKeys; ++c) {
      s[c] = c < visible ? dot<D>(qr, k_s + c * D) : -INFINITY;
      tile_max = fmaxf(tile_max, s[c]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float alpha = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l *= alpha;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] *= alpha;
#pragma unroll
    for (int c = 0; c < kKeys; ++c) {
      const float p = expf(s[c] - m_new);  // 0 for masked keys (s = -inf)
      l += p;
      axpy<D>(acc, p, v_s + c * D);
    }
    m = m_new;
  }
  if (i < Tq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;  // no keys: output 0
    T* o = out + (h * Tq + i) * D;
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] = static_cast<T>(acc[d] * inv);
    lse[h * Tq + i] = l > 0.f ? m + logf(l) : -INFINITY;
  }
}

// ------------------------------------------------------------------ backward
// delta[row] = dO[row] . O[row]
template <class T>
__global__ void flash_delta_kernel(float* __restrict__ delta, const T* __restrict__ dout,
                                   const T* __restrict__ out, int64_t rows, int D) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int d = 0; d < D; ++d)
      s = fmaf(static_cast<float>(dout[row * D + d]), static_cast<float>(out[row * D + d]), s);
    delta[row] = s;
  }
}

struct BackwardPtrs {
  const float* lse;
  const float* delta;
  int Tq, Tk;
  bool causal;
  float scale;
};

// dK and dV for kRows keys: thread t owns key j = j0 + t. Scalar shared-memory reads with own
// rows padded to D + 1 (lane r reads word r * (D + 1) + d: 32 banks): with 16-byte reads the
// compiler keeps both loaded tile rows live next to the two accumulator rows and spills.
template <class T, int D>
__global__ void __launch_bounds__(kRows)
    flash_backward_dkdv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ q,
                               const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ dout, BackwardPtrs a) {
  KILN_DYNAMIC_SHARED(float, smem);
  float* k_s = smem;                    // [kRows][D + 1], own rows
  float* v_s = k_s + kRows * (D + kScalarPad);   // [kRows][D + 1], own rows
  float* q_s = v_s + kRows * (D + kScalarPad);   // [kKeys][D], the query tile
  float* do_s = q_s + kKeys * D;        // [kKeys][D]
  float* lse_s = do_s + kKeys * D;      // [kKeys]
  float* delta_s = lse_s + kKeys;       // [kKeys]
  const int64_t h = blockIdx.y;
  const int j0 = blockIdx.x * kRows, t = threadIdx.x, j = j0 + t;
  q += h * a.Tq * D;
  dout += h * a.Tq * D;
  load_rows<T, D>(k_s, D + kScalarPad, k + h * a.Tk * D, j0, kRows, a.Tk);
  load_rows<T, D>(v_s, D + kScalarPad, v + h * a.Tk * D, j0, kRows, a.Tk);
  const float* kj = k_s + t * (D + kScalarPad);
  const float* vj = v_s + t * (D + kScalarPad);

  float dk_acc[D], dv_acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dk_acc[d] = dv_acc[d] = 0.f;
  // Causal: queries before j0 see none of these keys.
  const int first_tile = a.causal ? (j0 / kKeys) * kKeys : 0;
  for (int i0 = first_tile; i0 < a.Tq; i0 += kKeys) {
    __syncthreads();
    load_rows<T, D>(q_s, D, q, i0, kKeys, a.Tq);
    load_rows<T, D>(do_s, D, dout, i0, kKeys, a.Tq);
    for (int r = threadIdx.x; r < kKeys; r += blockDim.x) {
      const bool in = i0 + r < a.Tq;
      lse_s[r] = in ? a.lse[h * a.Tq + i0 + r] : 0.f;
      delta_s[r] = in ? a.delta[h * a.Tq + i0 + r] : 0.f;
    }
    __syncthreads();
    if (j >= a.Tk) continue;  // no early return: every thread takes part in the loads
    for (int r = 0; r < kKeys; ++r) {
      const int i = i0 + r;
      if (i >= a.Tq || (a.causal && j > i)) continue;
      const float* qi = q_s + r * D;
      const float* doi = do_s + r * D;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) {
        s = fmaf(qi[d], kj[d], s);
        dp = fmaf(doi[d], vj[d], dp);
      }
      const float p = expf(s * a.scale - lse_s[r]);
      const float ds = p * (dp - delta_s[r]) * a.scale;
#pragma unroll
      for (int d = 0; d < D; ++d) {
        dv_acc[d] = fmaf(p, doi[d], dv_acc[d]);
        dk_acc[d] = fmaf(ds, qi[d], dk_acc[d]);
      }
    }
  }
  if (j < a.Tk) {
    T* dkr = dk + (h * a.Tk + j) * D;
    T* dvr = dv + (h * a.Tk + j) * D;
#pragma unroll
    for (int d = 0; d < D; ++d) {
      dkr[d] = static_cast<T>(dk_acc[d]);
      dvr[d] = static_cast<T>(dv_acc[d]);
    }
  }
}

// dQ for kRows queries: thread t owns query i = i0 + t.
template <class T, int D>
__global__ void __launch_bounds__(kRows)
    flash_backward_dq_kernel(T* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const T* __restrict__ dout, BackwardPtrs a) {
  KILN_DYNAMIC_SHARED(float, smem);
  float* q_s = smem;                       // [kRows][D + kPad], own rows
  float* do_s = q_s + kRows * (D + kPad);  // [kRows][D + kPad], own rows
  float* k_s = do_s + kRows * (D + kPad);  // [kKeys][D], the key tile
  float* v_s = k_s + kKeys * D;         // [kKeys][D]
  const int64_t h = blockIdx.y;
  const int i0 = blockIdx.x * kRows, t = threadIdx.x, i = i0 + t;
  k += h * a.Tk * D;
  v += h * a.Tk * D;
  load_rows<T, D>(q_s, D + kPad, q + h * a.Tq * D, i0, kRows, a.Tq);
  load_rows<T, D>(do_s, D + kPad, dout + h * a.Tq * D, i0, kRows, a.Tq);
  const float* qi = q_s + t * (D + kPad);
  const float* doi = do_s + t * (D + kPad);
  const float li = i < a.Tq ? a.lse[h * a.Tq + i] : 0.f;
  const float di = i < a.Tq ? a.delta[h * a.Tq + i] : 0.f;
  const int row_end = i >= a.Tq ? 0 : a.causal ? i + 1 : a.Tk;

  float dq_acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dq_acc[d] = 0.f;
  const int key_end = a.causal ? imin(a.Tk, i0 + kRows) : a.Tk;
  for (int j0 = 0; j0 < key_end; j0 += kKeys) {
    __syncthreads();
    load_rows<T, D>(k_s, D, k, j0, kKeys, a.Tk);
    load_rows<T, D>(v_s, D, v, j0, kKeys, a.Tk);
    __syncthreads();
    const int visible = imin(kKeys, row_end - j0);
    for (int c = 0; c < visible; ++c) {
      reload_shared_rows();
      const float* kc = k_s + c * D;
      const float p = expf(dot<D>(qi, kc) * a.scale - li);
      const float ds = p * (dot<D>(doi, v_s + c * D) - di) * a.scale;
      axpy<D>(dq_acc, ds, kc);
    }
  }
  if (i < a.Tq) {
    T* dqr = dq + (h * a.Tq + i) * D;
#pragma unroll
    for (int d = 0; d < D; ++d) dqr[d] = static_cast<T>(dq_acc[d]);
  }
}

}  // namespace kiln::flash_kernels
