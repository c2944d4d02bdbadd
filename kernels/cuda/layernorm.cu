// CUDA layer norm over the last dim, plain and fused with the residual add
// (core/dispatch/transformer.h).
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
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/transformer.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/vector_access.cuh"
#include "kernels/transformer_common.h"

namespace kiln {
namespace {

using cuda::ceil_div;
using cuda::kWarp;
using cuda::load_vec;
using cuda::store_vec;
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

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
    for (int64_t i = lane; i < nvec; i += kWarp) {
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
  extern __shared__ unsigned char shared_raw[];
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
      A a[kVec], d[kVec];
      load_vec<kVec>(xr, i, a);
      load_vec<kVec>(dyr, i, d);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const A wdy = d[k] * (weight ? weight[i * kVec + k] : A(1));
        s += wdy;
        sx += wdy * (a[k] - m) * rs;
      }
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

// ------------------------------------------------------------------ launchers
unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(rows, kWarpsPerBlock), 1, kMaxBlocks));
}

void layer_norm_cuda(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                     const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  check_layer_norm_args(y, mean, rstd, sum, x, residual, weight, bias);
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    T* yp = static_cast<T*>(y.data_ptr());
    T* sp = data_or_null_mut<T>(sum);
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* rp = data_or_null_mut<const T>(residual);
    const int vec = cuda::vec_width<T>(cols, {yp, sp, xp, rp});
    cuda::with_vec_width<T>(vec, [&](auto v) {
      layer_norm_kernel<T, decltype(v)::value><<<row_blocks(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
          yp, static_cast<A*>(mean.data_ptr()), static_cast<A*>(rstd.data_ptr()), sp, xp, rp,
          data_or_null_mut<const A>(weight), data_or_null_mut<const A>(bias), rows, cols, static_cast<A>(eps));
    });
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void layer_norm_backward_cuda(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy, const Tensor& x,
                              const Tensor& mean, const Tensor& rstd, const Tensor& weight) {
  check_layer_norm_backward_args(dx, dweight, dbias, dy, x, mean, rstd, weight);
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm backward", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const T* dyp = static_cast<const T*>(dy.data_ptr());
    const T* xp = static_cast<const T*>(x.data_ptr());
    const A* mp = static_cast<const A*>(mean.data_ptr());
    const A* rp = static_cast<const A*>(rstd.data_ptr());
    T* dxp = data_or_null_mut<T>(dx);
    const A* wp = data_or_null_mut<const A>(weight);
    const int vec = cuda::vec_width<T>(cols, {dxp, dyp, xp});
    const TensorOptions acc_opts{accumulate_dtype(x.dtype()), x.device()};
    const int64_t sms = cuda::device_properties().multiProcessorCount;
    constexpr int kThreads = 256;
    const int64_t col_blocks = ceil_div(cols, kThreads);
    Tensor part_w, part_b;
    int64_t chunks = 0;  // partial rows written
    bool one_pass = false;
    if (dweight.defined() || dbias.defined()) {
      // One pass: a fixed grid (2 blocks of 8 warps per SM), so the order of the sums depends
      // only on the shape and the device.
      constexpr int kFusedWarps = 8;
      const int64_t blocks = std::clamp<int64_t>(ceil_div(rows, kFusedWarps), 1, 2 * sms);
      cuda::with_vec_width<T>(vec, [&](auto v) {
        constexpr int kVec = decltype(v)::value;
        one_pass = with_groups<kVec>(cols / kVec, [&](auto groups) {
          chunks = blocks;
          part_w = dweight.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
          part_b = dbias.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
          layer_norm_backward_fused_kernel<T, kVec, decltype(groups)::value>
              <<<blocks, kFusedWarps * kWarp, 2 * cols * sizeof(A), stream>>>(
                  dxp, data_or_null_mut<A>(part_w), data_or_null_mut<A>(part_b), dyp, xp, mp, rp, wp, rows, cols);
        });
      });
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (!one_pass && dxp) {
      cuda::with_vec_width<T>(vec, [&](auto v) {
        layer_norm_dx_kernel<T, decltype(v)::value><<<row_blocks(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
            dxp, dyp, xp, mp, rp, wp, rows, cols);
      });
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (!one_pass && (dweight.defined() || dbias.defined())) {
      // Enough chunks of rows to give every SM a few blocks.
      chunks = std::clamp<int64_t>(ceil_div(4 * sms, col_blocks), 1, std::min<int64_t>(rows, 65535));
      const int64_t rows_per_chunk = ceil_div(rows, chunks);
      part_w = dweight.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
      part_b = dbias.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
      layer_norm_param_partials_kernel<T><<<dim3(col_blocks, chunks), kThreads, 0, stream>>>(
          data_or_null_mut<A>(part_w), data_or_null_mut<A>(part_b), dyp, xp, mp, rp, rows, cols, rows_per_chunk);
      KILN_CUDA_CHECK_LAUNCH();
    }
    for (auto [out, part] : {std::pair{&dweight, &part_w}, std::pair{&dbias, &part_b}}) {
      if (!out->defined()) continue;
      sum_partials_kernel<A><<<col_blocks, kThreads, 0, stream>>>(static_cast<A*>(out->data_ptr()),
                                                                  static_cast<const A*>(part->data_ptr()),
                                                                  chunks, cols);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace

KILN_REGISTER_KERNEL(layer_norm_stub, CUDA, &layer_norm_cuda);
KILN_REGISTER_KERNEL(layer_norm_backward_stub, CUDA, &layer_norm_backward_cuda);

}  // namespace kiln
