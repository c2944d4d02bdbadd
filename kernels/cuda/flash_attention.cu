// CUDA flash attention (core/dispatch/attention.h), FlashAttention-2 style, for f32, bf16 and
// f16 storage with f32 arithmetic, head dims 16, 32, 64 and 128 (a template parameter, so the
// per-row accumulators live in registers).
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
// A thread's own row (q in the forward, k and v in dK/dV, q and dO in dQ) sits in shared
// memory with rows padded to D + 1 floats, so the 32 lanes of a warp, reading the same column
// of 32 different rows, hit 32 different banks; the tile everyone reads is a broadcast.
// Correctness and clarity first: scalar FMAs, no tensor cores.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/attention.h"
#include "core/half.h"

namespace kiln {
namespace {

constexpr int kRows = 64;  // threads per block: query (or key) rows a block owns
constexpr int kKeys = 32;  // rows per streamed tile

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// rows [row0, row0 + n) of a [T, D] matrix into dst (row stride ld), as f32 times `mul`; rows
// past T are zero.
template <class T, int D>
__device__ void load_rows(float* dst, int ld, const T* src, int row0, int n, int T_, float mul = 1.f) {
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    dst[r * ld + d] = row0 + r < T_ ? static_cast<float>(src[static_cast<int64_t>(row0 + r) * D + d]) * mul : 0.f;
  }
}

// ------------------------------------------------------------------ forward
template <class T, int D>
__global__ void __launch_bounds__(kRows)
    flash_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                         const T* __restrict__ k, const T* __restrict__ v, int Tq, int Tk, bool causal,
                         float scale) {
  extern __shared__ float smem[];
  float* q_s = smem;                   // [kRows][D + 1], pre-scaled
  float* k_s = q_s + kRows * (D + 1);  // [kKeys][D]
  float* v_s = k_s + kKeys * D;        // [kKeys][D]
  const int64_t h = blockIdx.y;
  const int i0 = blockIdx.x * kRows, r = threadIdx.x, i = i0 + r;
  q += h * Tq * D;
  k += h * Tk * D;
  v += h * Tk * D;
  load_rows<T, D>(q_s, D + 1, q, i0, kRows, Tq, scale);
  const float* qr = q_s + r * (D + 1);

  float acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  // Keys this row sees: [0, row_end); the block needs keys up to its last row's.
  const int row_end = i >= Tq ? 0 : causal ? i + 1 : Tk;
  const int key_end = causal ? min(Tk, i0 + kRows) : Tk;
  for (int j0 = 0; j0 < key_end; j0 += kKeys) {
    __syncthreads();  // everyone is done with the previous tile
    load_rows<T, D>(k_s, D, k, j0, kKeys, Tk);
    load_rows<T, D>(v_s, D, v, j0, kKeys, Tk);
    __syncthreads();
    const int visible = min(kKeys, row_end - j0);
    if (visible <= 0) continue;
    float s[kKeys];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < kKeys; ++c) {
      float dot = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) dot = fmaf(qr[d], k_s[c * D + d], dot);
      s[c] = c < visible ? dot : -INFINITY;
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
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] = fmaf(p, v_s[c * D + d], acc[d]);
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

// dK and dV for kRows keys: thread t owns key j = j0 + t.
template <class T, int D>
__global__ void __launch_bounds__(kRows)
    flash_backward_dkdv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ q,
                               const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ dout, BackwardPtrs a) {
  extern __shared__ float smem[];
  float* k_s = smem;                    // [kRows][D + 1], own rows
  float* v_s = k_s + kRows * (D + 1);   // [kRows][D + 1], own rows
  float* q_s = v_s + kRows * (D + 1);   // [kKeys][D], the query tile
  float* do_s = q_s + kKeys * D;        // [kKeys][D]
  float* lse_s = do_s + kKeys * D;      // [kKeys]
  float* delta_s = lse_s + kKeys;       // [kKeys]
  const int64_t h = blockIdx.y;
  const int j0 = blockIdx.x * kRows, t = threadIdx.x, j = j0 + t;
  q += h * a.Tq * D;
  dout += h * a.Tq * D;
  load_rows<T, D>(k_s, D + 1, k + h * a.Tk * D, j0, kRows, a.Tk);
  load_rows<T, D>(v_s, D + 1, v + h * a.Tk * D, j0, kRows, a.Tk);
  const float* kj = k_s + t * (D + 1);
  const float* vj = v_s + t * (D + 1);

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
  extern __shared__ float smem[];
  float* q_s = smem;                    // [kRows][D + 1], own rows
  float* do_s = q_s + kRows * (D + 1);  // [kRows][D + 1], own rows
  float* k_s = do_s + kRows * (D + 1);  // [kKeys][D], the key tile
  float* v_s = k_s + kKeys * D;         // [kKeys][D]
  const int64_t h = blockIdx.y;
  const int i0 = blockIdx.x * kRows, t = threadIdx.x, i = i0 + t;
  k += h * a.Tk * D;
  v += h * a.Tk * D;
  load_rows<T, D>(q_s, D + 1, q + h * a.Tq * D, i0, kRows, a.Tq);
  load_rows<T, D>(do_s, D + 1, dout + h * a.Tq * D, i0, kRows, a.Tq);
  const float* qi = q_s + t * (D + 1);
  const float* doi = do_s + t * (D + 1);
  const float li = i < a.Tq ? a.lse[h * a.Tq + i] : 0.f;
  const float di = i < a.Tq ? a.delta[h * a.Tq + i] : 0.f;
  const int row_end = i >= a.Tq ? 0 : a.causal ? i + 1 : a.Tk;

  float dq_acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) dq_acc[d] = 0.f;
  const int key_end = a.causal ? min(a.Tk, i0 + kRows) : a.Tk;
  for (int j0 = 0; j0 < key_end; j0 += kKeys) {
    __syncthreads();
    load_rows<T, D>(k_s, D, k, j0, kKeys, a.Tk);
    load_rows<T, D>(v_s, D, v, j0, kKeys, a.Tk);
    __syncthreads();
    const int visible = min(kKeys, row_end - j0);
    for (int c = 0; c < visible; ++c) {
      const float* kc = k_s + c * D;
      const float* vc = v_s + c * D;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) {
        s = fmaf(qi[d], kc[d], s);
        dp = fmaf(doi[d], vc[d], dp);
      }
      const float p = expf(s * a.scale - li);
      const float ds = p * (dp - di) * a.scale;
#pragma unroll
      for (int d = 0; d < D; ++d) dq_acc[d] = fmaf(ds, kc[d], dq_acc[d]);
    }
  }
  if (i < a.Tq) {
    T* dqr = dq + (h * a.Tq + i) * D;
#pragma unroll
    for (int d = 0; d < D; ++d) dqr[d] = static_cast<T>(dq_acc[d]);
  }
}

// ------------------------------------------------------------------ launchers
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
}

// Calls f(std::integral_constant<int, D>) for the supported head dims.
template <class F>
void with_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default:
      KILN_FAIL("flash attention on CUDA supports head dims 16, 32, 64 and 128, got ", D,
                " (use the naive or batched backend)");
  }
}

// f32, bf16 and f16 with f32 arithmetic; f64 would lose its precision here.
template <class F>
void with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(BFloat16{});
    case DType::f16: return f(Half{});
    default:
      KILN_FAIL("flash attention on CUDA supports f32, bf16 and f16, got ", dtype,
                " (use the naive backend for f64)");
  }
}

void check_grid(int64_t heads, int64_t T) {
  KILN_CHECK(heads <= 65535, "flash attention: batch * heads = ", heads, " exceeds 65535");
  KILN_CHECK(T <= (int64_t{1} << 30), "flash attention: sequence length ", T, " is too long");
}

void flash_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   bool causal, double scale) {
  const int64_t BH = q.size(0), Tq = q.size(1), Tk = k.size(1);
  check_grid(BH, std::max(Tq, Tk));
  cuda::DeviceGuard guard(q.device().index);
  cudaStream_t stream = cuda::current_stream();
  with_storage_type(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_head_dim(q.size(2), [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const size_t smem = sizeof(float) * (kRows * (D + 1) + 2 * kKeys * D);
      auto kernel = flash_forward_kernel<T, D>;
      allow_smem(kernel, smem);
      const dim3 grid(ceil_div(Tq, kRows), static_cast<unsigned>(BH));
      kernel<<<grid, kRows, smem, stream>>>(
          static_cast<T*>(out.data_ptr()), static_cast<float*>(lse.data_ptr()),
          static_cast<const T*>(q.data_ptr()), static_cast<const T*>(k.data_ptr()),
          static_cast<const T*>(v.data_ptr()), static_cast<int>(Tq), static_cast<int>(Tk), causal,
          static_cast<float>(scale));
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void flash_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                    const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, bool causal,
                    double scale) {
  const int64_t BH = q.size(0), Tq = q.size(1), Tk = k.size(1), D_ = q.size(2);
  check_grid(BH, std::max(Tq, Tk));
  cuda::DeviceGuard guard(q.device().index);
  cudaStream_t stream = cuda::current_stream();
  Tensor delta = Tensor::empty({BH, Tq}, {DType::f32, q.device()});
  with_storage_type(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const auto* qp = static_cast<const T*>(q.data_ptr());
    const auto* kp = static_cast<const T*>(k.data_ptr());
    const auto* vp = static_cast<const T*>(v.data_ptr());
    const auto* dop = static_cast<const T*>(dout.data_ptr());
    flash_delta_kernel<T><<<cuda::grid_for(BH * Tq, 256), 256, 0, stream>>>(
        static_cast<float*>(delta.data_ptr()), dop, static_cast<const T*>(out.data_ptr()), BH * Tq,
        static_cast<int>(D_));
    KILN_CUDA_CHECK_LAUNCH();
    const BackwardPtrs a{static_cast<const float*>(lse.data_ptr()), static_cast<const float*>(delta.data_ptr()),
                         static_cast<int>(Tq), static_cast<int>(Tk), causal, static_cast<float>(scale)};
    with_head_dim(D_, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const size_t smem_kv = sizeof(float) * (2 * kRows * (D + 1) + 2 * kKeys * D + 2 * kKeys);
      auto dkdv = flash_backward_dkdv_kernel<T, D>;
      allow_smem(dkdv, smem_kv);
      dkdv<<<dim3(ceil_div(Tk, kRows), static_cast<unsigned>(BH)), kRows, smem_kv, stream>>>(
          static_cast<T*>(dk.data_ptr()), static_cast<T*>(dv.data_ptr()), qp, kp, vp, dop, a);
      KILN_CUDA_CHECK_LAUNCH();
      const size_t smem_q = sizeof(float) * (2 * kRows * (D + 1) + 2 * kKeys * D);
      auto dqk = flash_backward_dq_kernel<T, D>;
      allow_smem(dqk, smem_q);
      dqk<<<dim3(ceil_div(Tq, kRows), static_cast<unsigned>(BH)), kRows, smem_q, stream>>>(
          static_cast<T*>(dq.data_ptr()), qp, kp, vp, dop, a);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(flash_attention_forward_stub, CUDA, &flash_forward);
KILN_REGISTER_KERNEL(flash_attention_backward_stub, CUDA, &flash_backward);

}  // namespace kiln
