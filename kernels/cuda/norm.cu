// CUDA batch-norm kernels (core/dispatch/norm.h). The input is [n, channels, inner].
//
//   statistics, backward sums   one block per channel (grid-stride over channels). Each thread
//                               accumulates a strided share of the channel's n * inner values;
//                               warp shuffles and one shared-memory step then combine the
//                               shares in a fixed order (block_reduce.cuh), so the result is
//                               the same on every run (no atomics). Statistics take two passes over the channel,
//                               the mean first, then sum((x - mean)^2), so a large mean cannot
//                               cancel the variance away as sum(x^2) - sum(x)^2 would.
//   normalise, input gradient   one thread per element, grid-stride; the channel of element k
//                               is (k / inner) % channels, in 32-bit arithmetic when it fits.
//
// Threads of a block read consecutive values of a channel, which are contiguous within each
// run of `inner` values: [N, C, H, W] inputs read coalesced. [N, C] inputs (inner = 1) read
// one value per run, strided by C; an MLP's activations are small enough for that to be fine.
// Arithmetic in opmath_t: f32 for f32 and the 16-bit floats, f64 for f64.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/norm.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/norm_common.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;
using cuda::kWarp;
constexpr int64_t kMaxChannelBlocks = 1 << 16;  // grid-stride loops cover more channels

// Visits the values of one channel in the order j = start, start + stride, ... where value j
// is element j % inner of run j / inner; carries the quotient and remainder along instead of
// dividing at every step.
struct ChannelWalk {
  int64_t run, k;                // where we are
  int64_t step_run, step_k;      // stride = step_run * inner + step_k
  int64_t inner;

  __device__ ChannelWalk(int64_t start, int64_t stride, int64_t inner_)
      : run(start / inner_), k(start % inner_), step_run(stride / inner_), step_k(stride % inner_),
        inner(inner_) {}
  __device__ void next() {
    run += step_run;
    k += step_k;
    if (k >= inner) {
      k -= inner;
      ++run;
    }
  }
  // Index of the current value of channel c in the [n, channels, inner] tensor.
  __device__ int64_t at(int64_t c, int64_t channels) const {
    return (run * channels + c) * inner + k;
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(opmath_t<T>* __restrict__ mean, opmath_t<T>* __restrict__ var,
                 const T* __restrict__ x, NormGeometry g) {
  using A = opmath_t<T>;
  __shared__ A partials[kThreads / kWarp];
  const A count = static_cast<A>(g.per_channel());
  for (int64_t c = blockIdx.x; c < g.channels; c += gridDim.x) {
    A sum = 0;
    for (ChannelWalk w(threadIdx.x, blockDim.x, g.inner); w.run < g.n; w.next())
      sum += static_cast<A>(x[w.at(c, g.channels)]);
    const A m = cuda::block_reduce_sum(sum, partials) / count;
    A sq = 0;
    for (ChannelWalk w(threadIdx.x, blockDim.x, g.inner); w.run < g.n; w.next()) {
      const A d = static_cast<A>(x[w.at(c, g.channels)]) - m;
      sq += d * d;
    }
    sq = cuda::block_reduce_sum(sq, partials);
    if (threadIdx.x == 0) {
      mean[c] = m;
      var[c] = sq / count;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    backward_reduce_kernel(opmath_t<T>* __restrict__ sum_dy, opmath_t<T>* __restrict__ sum_dy_xmu,
                           const T* __restrict__ dy, const T* __restrict__ x,
                           const opmath_t<T>* __restrict__ mean, NormGeometry g) {
  using A = opmath_t<T>;
  __shared__ A partials[kThreads / kWarp];
  for (int64_t c = blockIdx.x; c < g.channels; c += gridDim.x) {
    const A m = mean[c];
    A s = 0, sx = 0;
    for (ChannelWalk w(threadIdx.x, blockDim.x, g.inner); w.run < g.n; w.next()) {
      const int64_t idx = w.at(c, g.channels);
      const A d = static_cast<A>(dy[idx]);
      s += d;
      sx += d * (static_cast<A>(x[idx]) - m);
    }
    s = cuda::block_reduce_sum(s, partials);
    sx = cuda::block_reduce_sum(sx, partials);
    if (threadIdx.x == 0) {
      sum_dy[c] = s;
      sum_dy_xmu[c] = sx;
    }
  }
}

// ------------------------------------------------------------------ elementwise passes
template <class T, class Index>
__global__ void apply_kernel(T* __restrict__ y, const T* __restrict__ x,
                             const opmath_t<T>* __restrict__ mean,
                             const opmath_t<T>* __restrict__ invstd,
                             const opmath_t<T>* __restrict__ weight,
                             const opmath_t<T>* __restrict__ bias, Index total, Index channels,
                             Index inner) {
  using A = opmath_t<T>;
  for (Index k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
    const Index c = (k / inner) % channels;
    const A scale = invstd[c] * (weight ? weight[c] : A(1));
    const A shift = bias ? bias[c] : A(0);
    y[k] = static_cast<T>((static_cast<A>(x[k]) - mean[c]) * scale + shift);
  }
}

// sum_dy undefined (null): eval mode, dx = dy * invstd * weight.
template <class T, class Index>
__global__ void backward_input_kernel(T* __restrict__ dx, const T* __restrict__ dy,
                                      const T* __restrict__ x, const opmath_t<T>* __restrict__ mean,
                                      const opmath_t<T>* __restrict__ invstd,
                                      const opmath_t<T>* __restrict__ weight,
                                      const opmath_t<T>* __restrict__ sum_dy,
                                      const opmath_t<T>* __restrict__ sum_dy_xmu, Index total,
                                      Index channels, Index inner, opmath_t<T> count) {
  using A = opmath_t<T>;
  for (Index k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += gridDim.x * blockDim.x) {
    const Index c = (k / inner) % channels;
    const A is = invstd[c];
    const A scale = is * (weight ? weight[c] : A(1));
    A d = static_cast<A>(dy[k]);
    if (sum_dy) {
      const A mean_dy = sum_dy[c] / count;
      const A proj = sum_dy_xmu[c] / count * is * is;
      d = d - mean_dy - (static_cast<A>(x[k]) - mean[c]) * proj;
    }
    dx[k] = static_cast<T>(d * scale);
  }
}

// ------------------------------------------------------------------ launchers
unsigned channel_blocks(NormGeometry g) {
  return static_cast<unsigned>(std::clamp<int64_t>(g.channels, 1, kMaxChannelBlocks));
}

// Calls f(Index{}) with the narrowest index type for `total` elements: 32-bit division is
// several times cheaper than 64-bit on the GPU, and below 2^31 the grid-stride index cannot
// wrap a uint32 (it stays under total + grid size).
template <class F>
void with_index_type(int64_t total, F&& f) {
  if (total < (int64_t{1} << 31)) f(uint32_t{});
  else f(uint64_t{});
}

void stats_cuda(Tensor& mean, Tensor& var, const Tensor& x, NormGeometry g) {
  const char* what = "batch_norm_stats kernel";
  check_norm_input(x, g, what);
  check_per_channel({&mean, &var}, x, g, what);
  KILN_CHECK(mean.defined() && var.defined(), what, ": mean and var must be allocated");
  if (g.channels == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_stats", [&] {
    using A = opmath_t<scalar_t>;
    stats_kernel<scalar_t><<<channel_blocks(g), kThreads, 0, stream>>>(
        static_cast<A*>(mean.data_ptr()), static_cast<A*>(var.data_ptr()),
        static_cast<const scalar_t*>(x.data_ptr()), g);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void apply_cuda(Tensor& y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                const Tensor& weight, const Tensor& bias, NormGeometry g) {
  const char* what = "batch_norm_apply kernel";
  check_norm_input(x, g, what);
  check_norm_input(y, g, what);
  KILN_CHECK(y.dtype() == x.dtype() && y.device() == x.device(), what, ": ", x.meta_str(), " -> ",
             y.meta_str());
  check_per_channel({&mean, &invstd, &weight, &bias}, x, g, what);
  const int64_t total = x.numel();
  if (total == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_apply", [&] {
    using A = opmath_t<scalar_t>;
    with_index_type(total, [&](auto index) {
      using Index = decltype(index);
      apply_kernel<scalar_t, Index><<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
          static_cast<scalar_t*>(y.data_ptr()), static_cast<const scalar_t*>(x.data_ptr()),
          data_or_null<A>(mean), data_or_null<A>(invstd), data_or_null<A>(weight),
          data_or_null<A>(bias), static_cast<Index>(total), static_cast<Index>(g.channels),
          static_cast<Index>(g.inner));
    });
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void backward_reduce_cuda(Tensor& sum_dy, Tensor& sum_dy_xmu, const Tensor& dy, const Tensor& x,
                          const Tensor& mean, NormGeometry g) {
  const char* what = "batch_norm_backward_reduce kernel";
  check_norm_input(x, g, what);
  check_norm_input(dy, g, what);
  KILN_CHECK(dy.dtype() == x.dtype() && dy.device() == x.device(), what, ": dy ", dy.meta_str(),
             ", x ", x.meta_str());
  check_per_channel({&sum_dy, &sum_dy_xmu, &mean}, x, g, what);
  KILN_CHECK(sum_dy.defined() && sum_dy_xmu.defined() && mean.defined(), what,
             ": sums and mean must be given");
  if (g.channels == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_backward_reduce", [&] {
    using A = opmath_t<scalar_t>;
    backward_reduce_kernel<scalar_t><<<channel_blocks(g), kThreads, 0, stream>>>(
        static_cast<A*>(sum_dy.data_ptr()), static_cast<A*>(sum_dy_xmu.data_ptr()),
        static_cast<const scalar_t*>(dy.data_ptr()), static_cast<const scalar_t*>(x.data_ptr()),
        data_or_null<A>(mean), g);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void backward_input_cuda(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& mean,
                         const Tensor& invstd, const Tensor& weight, const Tensor& sum_dy,
                         const Tensor& sum_dy_xmu, NormGeometry g) {
  const char* what = "batch_norm_backward_input kernel";
  check_norm_input(x, g, what);
  check_norm_input(dy, g, what);
  check_norm_input(dx, g, what);
  KILN_CHECK(dy.dtype() == x.dtype() && dx.dtype() == x.dtype() && dy.device() == x.device() &&
                 dx.device() == x.device(),
             what, ": dy ", dy.meta_str(), ", x ", x.meta_str(), " -> dx ", dx.meta_str());
  KILN_CHECK(sum_dy.defined() == sum_dy_xmu.defined(), what, ": give both sums or neither");
  check_per_channel({&mean, &invstd, &weight, &sum_dy, &sum_dy_xmu}, x, g, what);
  const int64_t total = x.numel();
  if (total == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_backward_input", [&] {
    using A = opmath_t<scalar_t>;
    with_index_type(total, [&](auto index) {
      using Index = decltype(index);
      backward_input_kernel<scalar_t, Index>
          <<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
              static_cast<scalar_t*>(dx.data_ptr()), static_cast<const scalar_t*>(dy.data_ptr()),
              static_cast<const scalar_t*>(x.data_ptr()), data_or_null<A>(mean),
              data_or_null<A>(invstd), data_or_null<A>(weight), data_or_null<A>(sum_dy),
              data_or_null<A>(sum_dy_xmu), static_cast<Index>(total),
              static_cast<Index>(g.channels), static_cast<Index>(g.inner),
              static_cast<A>(g.per_channel()));
    });
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

KILN_REGISTER_KERNEL(batch_norm_stats_stub, CUDA, &stats_cuda);
KILN_REGISTER_KERNEL(batch_norm_apply_stub, CUDA, &apply_cuda);
KILN_REGISTER_KERNEL(batch_norm_backward_reduce_stub, CUDA, &backward_reduce_cuda);
KILN_REGISTER_KERNEL(batch_norm_backward_input_stub, CUDA, &backward_input_cuda);

}  // namespace kiln
