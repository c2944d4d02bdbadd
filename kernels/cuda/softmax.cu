// CUDA softmax, log-softmax and cross-entropy (core/dispatch/softmax.h).
//
//   classes <= 1024, inner == 1   one warp per row; the row lives in registers (kPerLane
//                                 values per lane), so it is read from memory once;
//   classes > 1024, inner == 1    one block per row: an online pass finds (max, sum of
//                                 exp(x - max)) in one read, a second pass writes;
//                                 16-byte loads and stores when rows are aligned;
//   inner > 1                     one thread per (outer, inner) column, classes strided by
//                                 inner (adjacent threads read adjacent addresses).
// Cross-entropy: one block per row computes max, sum-exp and the loss in one read; its
// backward recomputes the row's log-sum-exp and writes dlogits in the same kernel.
// Arithmetic in opmath_t (f32 for bf16/f16, whose results are stored back in their dtype).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/cuda_context.h"
#include "core/dispatch/softmax.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/online_softmax.cuh"
#include "kernels/cuda/vector_access.cuh"
#include "kernels/softmax_common.h"

namespace kiln {
namespace {

using cuda::ceil_div;
using cuda::exp_;
using cuda::kWarp;
using cuda::load_vec;
using cuda::log_;
using cuda::neg_inf;
using cuda::store_vec;
using cuda::vec_width;
using cuda::with_vec_width;
constexpr int kWarpRowMax = 1024;        // classes up to this get one warp per row
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// Threads for one block per row: about 8 elements each, 32 to 512.
int row_threads(int64_t classes) {
  return static_cast<int>(std::clamp<int64_t>(next_pow2(ceil_div(classes, 8)), kWarp, 512));
}

// ------------------------------------------------------------------ row statistics
// The online (max, sum of exp(x - max)) of kernels/cuda/online_softmax.cuh over part of a
// row, plus the plain sum of x that label smoothing needs.
template <class A>
struct RowStats : cuda::SoftmaxStats<A> {
  A sum;
};

template <class A>
__device__ __forceinline__ RowStats<A> empty_stats() {
  return {cuda::empty_softmax_stats<A>(), A(0)};
}

template <class A>
__device__ __forceinline__ void add_value(RowStats<A>& s, A v) {
  cuda::add_value(static_cast<cuda::SoftmaxStats<A>&>(s), v);
  s.sum += v;
}

struct MergeStats {
  template <class A>
  __device__ RowStats<A> operator()(RowStats<A> a, RowStats<A> b) const {
    return {cuda::MergeSoftmaxStats{}(a, b), a.sum + b.sum};
  }
};

// Moves all three fields between lanes, for the warp and block reductions of block_reduce.cuh.
template <class A>
__device__ __forceinline__ RowStats<A> shfl_xor(RowStats<A> v, int mask) {
  return {cuda::shfl_xor(static_cast<cuda::SoftmaxStats<A>>(v), mask), cuda::shfl_xor(v.sum, mask)};
}

// ------------------------------------------------------------------ softmax forward
template <class T, int kPerLane, bool kLog>
__global__ void softmax_warp_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows,
                                    int classes) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / kWarp; row < rows; row += gridDim.x * warps) {
    const T* x = in + row * classes;
    T* y = out + row * classes;
    A v[kPerLane];
    A m = neg_inf<A>();
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + k * kWarp;
      v[k] = c < classes ? static_cast<A>(x[c]) : neg_inf<A>();
      m = v[k] > m ? v[k] : m;
    }
    m = cuda::warp_reduce_max(m);
    A s = 0;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k)
      if (lane + k * kWarp < classes) s += exp_(v[k] - m);
    s = cuda::warp_reduce_sum(s);
    const A log_s = log_(s);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + k * kWarp;
      if (c < classes) y[c] = static_cast<T>(kLog ? v[k] - m - log_s : exp_(v[k] - m) / s);
    }
  }
}

template <class T, int kVec, bool kLog>
__global__ void softmax_block_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows,
                                     int64_t classes) {
  using A = opmath_t<T>;
  __shared__ RowStats<A> scratch[kWarp];
  const int64_t nvec = classes / kVec;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x = in + row * classes;
    T* y = out + row * classes;
    RowStats<A> st = empty_stats<A>();
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k) add_value(st, v[k]);
    }
    st = cuda::block_reduce(st, MergeStats{}, empty_stats<A>(), scratch);
    const A log_s = log_(st.sum_exp);
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[k] = kLog ? v[k] - st.max - log_s : exp_(v[k] - st.max) / st.sum_exp;
      store_vec<kVec>(y, i, v);
    }
  }
}

template <class T, bool kLog>
__global__ void softmax_strided_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t outer,
                                       int64_t classes, int64_t inner) {
  using A = opmath_t<T>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < outer * inner;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (idx / inner) * classes * inner + idx % inner;
    RowStats<A> st = empty_stats<A>();
    for (int64_t c = 0; c < classes; ++c) add_value(st, static_cast<A>(in[base + c * inner]));
    const A log_s = log_(st.sum_exp);
    for (int64_t c = 0; c < classes; ++c) {
      const A v = static_cast<A>(in[base + c * inner]);
      out[base + c * inner] = static_cast<T>(kLog ? v - st.max - log_s : exp_(v - st.max) / st.sum_exp);
    }
  }
}

// ------------------------------------------------------------------ softmax backward
// softmax:     dx = y * (g - sum(g * y))
// log_softmax: dx = g - exp(y) * sum(g)
template <class A, bool kLog>
__device__ __forceinline__ A dot_term(A g, A y) {
  return kLog ? g : g * y;
}
template <class A, bool kLog>
__device__ __forceinline__ A grad_in(A g, A y, A dot) {
  return kLog ? g - exp_(y) * dot : y * (g - dot);
}

template <class T, int kPerLane, bool kLog>
__global__ void softmax_backward_warp_kernel(T* __restrict__ gi, const T* __restrict__ go,
                                             const T* __restrict__ out, int64_t rows, int classes) {
  using A = opmath_t<T>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / kWarp; row < rows; row += gridDim.x * warps) {
    const int64_t base = row * classes;
    A g[kPerLane], y[kPerLane];
    A dot = 0;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + k * kWarp;
      g[k] = c < classes ? static_cast<A>(go[base + c]) : A(0);
      y[k] = c < classes ? static_cast<A>(out[base + c]) : A(0);
      dot += dot_term<A, kLog>(g[k], y[k]);
    }
    dot = cuda::warp_reduce_sum(dot);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int c = lane + k * kWarp;
      if (c < classes) gi[base + c] = static_cast<T>(grad_in<A, kLog>(g[k], y[k], dot));
    }
  }
}

template <class T, int kVec, bool kLog>
__global__ void softmax_backward_block_kernel(T* __restrict__ gi, const T* __restrict__ go,
                                              const T* __restrict__ out, int64_t rows, int64_t classes) {
  using A = opmath_t<T>;
  __shared__ A scratch[kWarp];
  const int64_t nvec = classes / kVec;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * classes;
    A dot = 0;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A g[kVec], y[kVec];
      load_vec<kVec>(go + base, i, g);
      load_vec<kVec>(out + base, i, y);
#pragma unroll
      for (int k = 0; k < kVec; ++k) dot += dot_term<A, kLog>(g[k], y[k]);
    }
    dot = cuda::block_reduce_sum(dot, scratch);
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A g[kVec], y[kVec];
      load_vec<kVec>(go + base, i, g);
      load_vec<kVec>(out + base, i, y);
#pragma unroll
      for (int k = 0; k < kVec; ++k) g[k] = grad_in<A, kLog>(g[k], y[k], dot);
      store_vec<kVec>(gi + base, i, g);
    }
  }
}

template <class T, bool kLog>
__global__ void softmax_backward_strided_kernel(T* __restrict__ gi, const T* __restrict__ go,
                                                const T* __restrict__ out, int64_t outer,
                                                int64_t classes, int64_t inner) {
  using A = opmath_t<T>;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < outer * inner;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (idx / inner) * classes * inner + idx % inner;
    A dot = 0;
    for (int64_t c = 0; c < classes; ++c)
      dot += dot_term<A, kLog>(static_cast<A>(go[base + c * inner]), static_cast<A>(out[base + c * inner]));
    for (int64_t c = 0; c < classes; ++c) {
      const int64_t k = base + c * inner;
      gi[k] = static_cast<T>(grad_in<A, kLog>(static_cast<A>(go[k]), static_cast<A>(out[k]), dot));
    }
  }
}

// ------------------------------------------------------------------ cross-entropy
// loss = (1-e) * (lse - x[t]) + e * (lse - mean(x)). A target outside [0, C) that is not
// ignore_index gives a NaN loss (and NaN gradients): the GPU cannot throw, and a NaN is loud.
template <class T, class Idx, int kVec>
__global__ void cross_entropy_kernel(opmath_t<T>* __restrict__ losses, const T* __restrict__ logits,
                                     const Idx* __restrict__ targets, int64_t rows, int64_t classes,
                                     int64_t ignore_index, opmath_t<T> smoothing) {
  using A = opmath_t<T>;
  __shared__ RowStats<A> scratch[kWarp];
  const int64_t nvec = classes / kVec;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = static_cast<int64_t>(targets[row]);
    if (t == ignore_index || t < 0 || t >= classes) {  // the same branch for the whole block
      if (threadIdx.x == 0)
        losses[row] = t == ignore_index ? A(0) : std::numeric_limits<A>::quiet_NaN();
      continue;
    }
    const T* x = logits + row * classes;
    RowStats<A> st = empty_stats<A>();
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k) add_value(st, v[k]);
    }
    st = cuda::block_reduce(st, MergeStats{}, empty_stats<A>(), scratch);
    if (threadIdx.x == 0) {
      const A lse = st.max + log_(st.sum_exp);
      const A mean_x = st.sum / static_cast<A>(classes);
      losses[row] = cross_entropy_loss(lse, static_cast<A>(x[t]), mean_x, smoothing);
    }
  }
}

// dlogits = g * (softmax(x) - (1-e) * onehot(t) - e/C); zero for ignored rows.
template <class T, class Idx, int kVec>
__global__ void cross_entropy_backward_kernel(T* __restrict__ dlogits, const T* __restrict__ logits,
                                              const Idx* __restrict__ targets,
                                              const opmath_t<T>* __restrict__ grad_losses,
                                              int64_t grad_stride, int64_t rows, int64_t classes,
                                              int64_t ignore_index, opmath_t<T> smoothing) {
  using A = opmath_t<T>;
  __shared__ RowStats<A> scratch[kWarp];
  const int64_t nvec = classes / kVec;
  const A off = smoothing / static_cast<A>(classes);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t t = static_cast<int64_t>(targets[row]);
    const T* x = logits + row * classes;
    T* d = dlogits + row * classes;
    if (t == ignore_index || t < 0 || t >= classes) {
      A fill[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) fill[k] = t == ignore_index ? A(0) : std::numeric_limits<A>::quiet_NaN();
      for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) store_vec<kVec>(d, i, fill);
      continue;
    }
    RowStats<A> st = empty_stats<A>();
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k) add_value(st, v[k]);
    }
    st = cuda::block_reduce(st, MergeStats{}, empty_stats<A>(), scratch);
    const A lse = st.max + log_(st.sum_exp);
    const A g = grad_losses[row * grad_stride];
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      A v[kVec];
      load_vec<kVec>(x, i, v);
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        v[k] = cross_entropy_grad(g, exp_(v[k] - lse), i * kVec + k == t, smoothing, off);
      store_vec<kVec>(d, i, v);
    }
  }
}

// ------------------------------------------------------------------ launchers
// Calls f(std::integral_constant<int, kPerLane>) with the smallest power of two such that
// 32 * kPerLane >= classes (classes <= kWarpRowMax).
template <class F>
void with_per_lane(int64_t classes, F&& f) {
  if (classes <= 32) f(std::integral_constant<int, 1>{});
  else if (classes <= 64) f(std::integral_constant<int, 2>{});
  else if (classes <= 128) f(std::integral_constant<int, 4>{});
  else if (classes <= 256) f(std::integral_constant<int, 8>{});
  else if (classes <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

template <class T, bool kLog>
void launch_softmax(T* y, const T* x, int64_t outer, int64_t classes, int64_t inner) {
  cudaStream_t stream = cuda::current_stream();
  if (inner == 1 && classes <= kWarpRowMax) {
    const int64_t blocks = std::min(ceil_div(outer, kWarpsPerBlock), kMaxBlocks);
    with_per_lane(classes, [&](auto per_lane) {
      softmax_warp_kernel<T, decltype(per_lane)::value, kLog>
          <<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(y, x, outer, static_cast<int>(classes));
    });
  } else if (inner == 1) {
    with_vec_width<T>(vec_width<T>(classes, {x, y}), [&](auto vec) {
      softmax_block_kernel<T, decltype(vec)::value, kLog>
          <<<std::min(outer, kMaxBlocks), row_threads(classes), 0, stream>>>(y, x, outer, classes);
    });
  } else {
    softmax_strided_kernel<T, kLog><<<cuda::grid_for(outer * inner, 256), 256, 0, stream>>>(
        y, x, outer, classes, inner);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

template <class T, bool kLog>
void launch_softmax_backward(T* gi, const T* go, const T* y, int64_t outer, int64_t classes,
                             int64_t inner) {
  cudaStream_t stream = cuda::current_stream();
  if (inner == 1 && classes <= kWarpRowMax) {
    const int64_t blocks = std::min(ceil_div(outer, kWarpsPerBlock), kMaxBlocks);
    with_per_lane(classes, [&](auto per_lane) {
      softmax_backward_warp_kernel<T, decltype(per_lane)::value, kLog>
          <<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(gi, go, y, outer, static_cast<int>(classes));
    });
  } else if (inner == 1) {
    with_vec_width<T>(vec_width<T>(classes, {gi, go, y}), [&](auto vec) {
      softmax_backward_block_kernel<T, decltype(vec)::value, kLog>
          <<<std::min(outer, kMaxBlocks), row_threads(classes), 0, stream>>>(gi, go, y, outer, classes);
    });
  } else {
    softmax_backward_strided_kernel<T, kLog><<<cuda::grid_for(outer * inner, 256), 256, 0, stream>>>(
        gi, go, y, outer, classes, inner);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

void softmax_cuda(Tensor& out, const Tensor& in, int64_t outer, int64_t classes, int64_t inner,
                  bool log) {
  check_softmax_args(out, in);
  if (out.numel() == 0) return;
  cuda::DeviceGuard guard(in.device().index);
  KILN_DISPATCH_FLOATING(in.dtype(), "softmax", [&] {
    auto* y = static_cast<scalar_t*>(out.data_ptr());
    const auto* x = static_cast<const scalar_t*>(in.data_ptr());
    if (log) launch_softmax<scalar_t, true>(y, x, outer, classes, inner);
    else launch_softmax<scalar_t, false>(y, x, outer, classes, inner);
  });
}

void softmax_backward_cuda(Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                           int64_t outer, int64_t classes, int64_t inner, bool log) {
  check_softmax_backward_args(grad_in, grad_out, out);
  if (grad_in.numel() == 0) return;
  cuda::DeviceGuard guard(out.device().index);
  KILN_DISPATCH_FLOATING(out.dtype(), "softmax backward", [&] {
    auto* gi = static_cast<scalar_t*>(grad_in.data_ptr());
    const auto* go = static_cast<const scalar_t*>(grad_out.data_ptr());
    const auto* y = static_cast<const scalar_t*>(out.data_ptr());
    if (log) launch_softmax_backward<scalar_t, true>(gi, go, y, outer, classes, inner);
    else launch_softmax_backward<scalar_t, false>(gi, go, y, outer, classes, inner);
  });
}

void cross_entropy_cuda(Tensor& losses, const Tensor& logits, const Tensor& targets,
                        int64_t ignore_index, double label_smoothing) {
  check_cross_entropy_args(logits, targets, losses, "cross_entropy kernel");
  KILN_CHECK(losses.is_contiguous(), "cross_entropy kernel: losses ", losses.meta_str());
  const int64_t rows = logits.size(0), classes = logits.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(logits.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(logits.dtype(), "cross_entropy", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const auto* x = static_cast<const T*>(logits.data_ptr());
    auto* l = static_cast<A*>(losses.data_ptr());
    KILN_DISPATCH_INDEX(targets.dtype(), "cross_entropy", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      with_vec_width<T>(vec_width<T>(classes, {x}), [&](auto vec) {
        cross_entropy_kernel<T, scalar_t, decltype(vec)::value>
            <<<std::min(rows, kMaxBlocks), row_threads(classes), 0, stream>>>(
                l, x, t, rows, classes, ignore_index, static_cast<A>(label_smoothing));
      });
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void cross_entropy_backward_cuda(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                 const Tensor& grad_losses, int64_t ignore_index,
                                 double label_smoothing) {
  check_cross_entropy_backward_args(dlogits, logits, targets, grad_losses);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(logits.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(logits.dtype(), "cross_entropy backward", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const auto* x = static_cast<const T*>(logits.data_ptr());
    auto* d = static_cast<T*>(dlogits.data_ptr());
    const auto* g = static_cast<const A*>(grad_losses.data_ptr());
    KILN_DISPATCH_INDEX(targets.dtype(), "cross_entropy backward", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      with_vec_width<T>(vec_width<T>(classes, {x, d}), [&](auto vec) {
        cross_entropy_backward_kernel<T, scalar_t, decltype(vec)::value>
            <<<std::min(rows, kMaxBlocks), row_threads(classes), 0, stream>>>(
                d, x, t, g, grad_losses.stride(0), rows, classes, ignore_index,
                static_cast<A>(label_smoothing));
      });
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(softmax_stub, CUDA, &softmax_cuda);
KILN_REGISTER_KERNEL(softmax_backward_stub, CUDA, &softmax_backward_cuda);
KILN_REGISTER_KERNEL(cross_entropy_stub, CUDA, &cross_entropy_cuda);
KILN_REGISTER_KERNEL(cross_entropy_backward_stub, CUDA, &cross_entropy_backward_cuda);

}  // namespace kiln
