// CUDA layer norm over the last dim, plain and fused with the residual add
// (core/dispatch/transformer.h).
//
//   forward    one warp per row: the first pass reads x (and the residual, writing their
//              sum), the next two re-read the row from L1/L2 for the variance (two passes,
//              like the CPU kernel, so a large mean does not cancel) and for the output.
//              16-byte vector access when rows are aligned.
//   backward   one warp per row for dx (its two row sums by warp shuffles); the weight and
//              bias gradients are column sums: each thread owns a column and walks a chunk
//              of rows in order into a partial row, then one thread per column adds the
//              partial rows in order. Fixed orders throughout, no atomics: the same bits
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

using cuda::kWarp;
using cuda::load_vec;
using cuda::store_vec;
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float rsqrt_(float x) { return rsqrtf(x); }
__device__ __forceinline__ double rsqrt_(double x) { return 1.0 / ::sqrt(x); }

// ------------------------------------------------------------------ forward
template <class T, int kVec>
__global__ void layer_norm_kernel(T* __restrict__ y, opmath_t<T>* __restrict__ mean,
                                  opmath_t<T>* __restrict__ rstd, T* __restrict__ sum,
                                  const T* __restrict__ x, const T* __restrict__ residual,
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
      xr = sr;  // this lane re-reads only the elements it wrote
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
    if (dx.defined()) {
      T* dxp = static_cast<T*>(dx.data_ptr());
      cuda::with_vec_width<T>(cuda::vec_width<T>(cols, {dxp, dyp, xp}), [&](auto v) {
        layer_norm_dx_kernel<T, decltype(v)::value><<<row_blocks(rows), kWarpsPerBlock * kWarp, 0, stream>>>(
            dxp, dyp, xp, mp, rp, data_or_null_mut<const A>(weight), rows, cols);
      });
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (!dweight.defined() && !dbias.defined()) return;
    // Enough chunks of rows to give every SM a few blocks; the chunk count depends only on the
    // shape and the device, so the summation order does too.
    constexpr int kThreads = 256;
    const int64_t col_blocks = ceil_div(cols, kThreads);
    const int64_t sms = cuda::device_properties().multiProcessorCount;
    const int64_t chunks = std::clamp<int64_t>(ceil_div(4 * sms, col_blocks), 1, std::min<int64_t>(rows, 65535));
    const int64_t rows_per_chunk = ceil_div(rows, chunks);
    const TensorOptions acc_opts{transformer_acc_dtype(x.dtype()), x.device()};
    Tensor part_w = dweight.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
    Tensor part_b = dbias.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
    layer_norm_param_partials_kernel<T><<<dim3(col_blocks, chunks), kThreads, 0, stream>>>(
        data_or_null_mut<A>(part_w), data_or_null_mut<A>(part_b), dyp, xp, mp, rp, rows, cols, rows_per_chunk);
    KILN_CUDA_CHECK_LAUNCH();
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
