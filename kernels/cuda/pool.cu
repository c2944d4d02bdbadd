// CUDA max, average and adaptive average pooling (core/dispatch/pool.h). Forward: one thread
// per output element. Backward: one thread per INPUT element, gathering from the outputs whose
// windows cover it, in ascending output order. No atomics, so gradients are deterministic and
// summed in the same order as the CPU kernels (kernels/cpu/pool.cpp). Arithmetic in opmath_t.
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/pool.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

#define KILN_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// The outputs along one dim whose windows [o*stride - pad, +kernel) contain input index i:
// [first, last). Windows are also clipped to the padded input, which never excludes an i < in.
struct CoverRange {
  int64_t first, last;
};
__device__ __forceinline__ CoverRange covering_windows(int64_t i, int64_t stride, int64_t pad,
                                                       int64_t kernel, int64_t out) {
  const int64_t first = i + pad < kernel ? 0 : (i + pad - kernel) / stride + 1;
  const int64_t last = (i + pad) / stride + 1;
  return {first, last < out ? last : out};
}

// ------------------------------------------------------------------ max
template <class T>
__global__ void max_pool_forward_kernel(T* __restrict__ y, int64_t* __restrict__ idx,
                                        const T* __restrict__ x, Pool2dGeometry g, int64_t n) {
  using A = opmath_t<T>;
  KILN_GRID_STRIDE(k, n) {
    const int64_t ow = k % g.out_w, oh = (k / g.out_w) % g.out_h, p = k / (g.out_w * g.out_h);
    const T* xp = x + p * g.in_h * g.in_w;
    const PoolWindow wh = pool_window(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
    const PoolWindow ww = pool_window(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
    A best = -INFINITY;
    int64_t best_at = wh.start * g.in_w + ww.start;
    for (int64_t h = wh.start; h < wh.end; ++h) {
      for (int64_t w = ww.start; w < ww.end; ++w) {
        const A v = static_cast<A>(xp[h * g.in_w + w]);
        if (v > best || v != v) {  // first max wins; NaN wins
          best = v;
          best_at = h * g.in_w + w;
        }
      }
    }
    y[k] = static_cast<T>(best);
    idx[k] = best_at;
  }
}

template <class T>
__global__ void max_pool_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy,
                                         const int64_t* __restrict__ idx, Pool2dGeometry g, int64_t n) {
  using A = opmath_t<T>;
  KILN_GRID_STRIDE(k, n) {
    const int64_t w = k % g.in_w, h = (k / g.in_w) % g.in_h, p = k / (g.in_w * g.in_h);
    const int64_t here = h * g.in_w + w, base = p * g.out_h * g.out_w;
    const CoverRange rh = covering_windows(h, g.stride_h, g.pad_h, g.kernel_h, g.out_h);
    const CoverRange rw = covering_windows(w, g.stride_w, g.pad_w, g.kernel_w, g.out_w);
    A acc = 0;
    for (int64_t oh = rh.first; oh < rh.last; ++oh)
      for (int64_t ow = rw.first; ow < rw.last; ++ow) {
        const int64_t o = base + oh * g.out_w + ow;
        if (idx[o] == here) acc += static_cast<A>(dy[o]);
      }
    dx[k] = static_cast<T>(acc);
  }
}

// ------------------------------------------------------------------ average, adaptive average
// `win` is AvgPoolWindows or AdaptiveAvgWindows (core/dispatch/pool.h).
template <class T, class Windows>
__global__ void average_forward_kernel(T* __restrict__ y, const T* __restrict__ x, Windows win, int64_t n) {
  using A = opmath_t<T>;
  const Pool2dGeometry& g = win.g;
  KILN_GRID_STRIDE(k, n) {
    const int64_t ow = k % g.out_w, oh = (k / g.out_w) % g.out_h, p = k / (g.out_w * g.out_h);
    const T* xp = x + p * g.in_h * g.in_w;
    const AvgSpan sh = win.row(oh), sw = win.col(ow);
    A sum = 0;
    for (int64_t h = sh.start; h < sh.end; ++h)
      for (int64_t w = sw.start; w < sw.end; ++w) sum += static_cast<A>(xp[h * g.in_w + w]);
    y[k] = static_cast<T>(sum / static_cast<A>(sh.count * sw.count));
  }
}

// The outputs along one dim whose windows may contain input index i: exactly those for
// avg_pool2d; for adaptive_avg_pool2d, cells [floor(i*out/in), ceil((i+1)*out/in)), a superset
// the backward kernel checks again.
__device__ __forceinline__ CoverRange covering_rows(const AvgPoolWindows& win, int64_t h) {
  return covering_windows(h, win.g.stride_h, win.g.pad_h, win.g.kernel_h, win.g.out_h);
}
__device__ __forceinline__ CoverRange covering_cols(const AvgPoolWindows& win, int64_t w) {
  return covering_windows(w, win.g.stride_w, win.g.pad_w, win.g.kernel_w, win.g.out_w);
}
__device__ __forceinline__ CoverRange adaptive_cover(int64_t i, int64_t in, int64_t out) {
  const int64_t first = (i * out) / in, last = ((i + 1) * out + in - 1) / in;
  return {first, last < out ? last : out};
}
__device__ __forceinline__ CoverRange covering_rows(const AdaptiveAvgWindows& win, int64_t h) {
  return adaptive_cover(h, win.g.in_h, win.g.out_h);
}
__device__ __forceinline__ CoverRange covering_cols(const AdaptiveAvgWindows& win, int64_t w) {
  return adaptive_cover(w, win.g.in_w, win.g.out_w);
}

template <class T, class Windows>
__global__ void average_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, Windows win,
                                        int64_t n) {
  using A = opmath_t<T>;
  const Pool2dGeometry& g = win.g;
  KILN_GRID_STRIDE(k, n) {
    const int64_t w = k % g.in_w, h = (k / g.in_w) % g.in_h, p = k / (g.in_w * g.in_h);
    const T* dyp = dy + p * g.out_h * g.out_w;
    const CoverRange rh = covering_rows(win, h), rw = covering_cols(win, w);
    A acc = 0;
    for (int64_t oh = rh.first; oh < rh.last; ++oh) {
      const AvgSpan sh = win.row(oh);
      if (h < sh.start || h >= sh.end) continue;
      for (int64_t ow = rw.first; ow < rw.last; ++ow) {
        const AvgSpan sw = win.col(ow);
        if (w < sw.start || w >= sw.end) continue;
        acc += static_cast<A>(dyp[oh * g.out_w + ow]) / static_cast<A>(sh.count * sw.count);
      }
    }
    dx[k] = static_cast<T>(acc);
  }
}

// ------------------------------------------------------------------ launchers
void check_planes(const char* what, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.is_contiguous() && b.is_contiguous() && a.dtype() == b.dtype() && a.is_cuda() &&
                 a.device() == b.device(),
             what, ": ", b.meta_str(), " -> ", a.meta_str());
}

// Runs `launch(grid, stream)` for n elements on the tensor's device.
template <class F>
void launch_on(const Tensor& t, int64_t n, F&& launch) {
  if (n == 0) return;
  cuda::DeviceGuard guard(t.device().index);
  launch(cuda::grid_for(n, kThreads), cuda::current_stream());
  KILN_CUDA_CHECK_LAUNCH();
}

void max_pool2d_cuda(Tensor& out, Tensor& indices, const Tensor& input, const Pool2dGeometry& g) {
  check_planes("max_pool2d kernel", out, input);
  KILN_CHECK(indices.is_contiguous() && indices.dtype() == DType::i64 && indices.device() == out.device(),
             "max_pool2d kernel: indices ", indices.meta_str());
  KILN_DISPATCH_FLOATING(input.dtype(), "max_pool2d", [&] {
    launch_on(out, out.numel(), [&](unsigned grid, cudaStream_t stream) {
      max_pool_forward_kernel<<<grid, kThreads, 0, stream>>>(
          out.data<scalar_t>(), indices.data<int64_t>(), input.data<scalar_t>(), g, out.numel());
    });
  });
}

void max_pool2d_backward_cuda(Tensor& grad_input, const Tensor& grad_out, const Tensor& indices,
                              const Pool2dGeometry& g) {
  check_planes("max_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "max_pool2d backward", [&] {
    launch_on(grad_input, grad_input.numel(), [&](unsigned grid, cudaStream_t stream) {
      max_pool_backward_kernel<<<grid, kThreads, 0, stream>>>(grad_input.data<scalar_t>(),
                                                              grad_out.data<scalar_t>(),
                                                              indices.data<int64_t>(), g, grad_input.numel());
    });
  });
}

void avg_pool2d_cuda(Tensor& out, const Tensor& input, const Pool2dGeometry& g, bool count_include_pad) {
  check_planes("avg_pool2d kernel", out, input);
  KILN_DISPATCH_FLOATING(input.dtype(), "avg_pool2d", [&] {
    launch_on(out, out.numel(), [&](unsigned grid, cudaStream_t stream) {
      average_forward_kernel<<<grid, kThreads, 0, stream>>>(
          out.data<scalar_t>(), input.data<scalar_t>(), AvgPoolWindows{g, count_include_pad}, out.numel());
    });
  });
}

void avg_pool2d_backward_cuda(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g,
                              bool count_include_pad) {
  check_planes("avg_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "avg_pool2d backward", [&] {
    launch_on(grad_input, grad_input.numel(), [&](unsigned grid, cudaStream_t stream) {
      average_backward_kernel<<<grid, kThreads, 0, stream>>>(
          grad_input.data<scalar_t>(), grad_out.data<scalar_t>(), AvgPoolWindows{g, count_include_pad},
          grad_input.numel());
    });
  });
}

void adaptive_avg_pool2d_cuda(Tensor& out, const Tensor& input, const Pool2dGeometry& g) {
  check_planes("adaptive_avg_pool2d kernel", out, input);
  KILN_DISPATCH_FLOATING(input.dtype(), "adaptive_avg_pool2d", [&] {
    launch_on(out, out.numel(), [&](unsigned grid, cudaStream_t stream) {
      average_forward_kernel<<<grid, kThreads, 0, stream>>>(out.data<scalar_t>(), input.data<scalar_t>(),
                                                            AdaptiveAvgWindows{g}, out.numel());
    });
  });
}

void adaptive_avg_pool2d_backward_cuda(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g) {
  check_planes("adaptive_avg_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "adaptive_avg_pool2d backward", [&] {
    launch_on(grad_input, grad_input.numel(), [&](unsigned grid, cudaStream_t stream) {
      average_backward_kernel<<<grid, kThreads, 0, stream>>>(
          grad_input.data<scalar_t>(), grad_out.data<scalar_t>(), AdaptiveAvgWindows{g}, grad_input.numel());
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(max_pool2d_stub, CUDA, &max_pool2d_cuda);
KILN_REGISTER_KERNEL(max_pool2d_backward_stub, CUDA, &max_pool2d_backward_cuda);
KILN_REGISTER_KERNEL(avg_pool2d_stub, CUDA, &avg_pool2d_cuda);
KILN_REGISTER_KERNEL(avg_pool2d_backward_stub, CUDA, &avg_pool2d_backward_cuda);
KILN_REGISTER_KERNEL(adaptive_avg_pool2d_stub, CUDA, &adaptive_avg_pool2d_cuda);
KILN_REGISTER_KERNEL(adaptive_avg_pool2d_backward_stub, CUDA, &adaptive_avg_pool2d_backward_cuda);

}  // namespace kiln

#undef KILN_GRID_STRIDE
