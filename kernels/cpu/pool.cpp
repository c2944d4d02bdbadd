// CPU max, average and adaptive average pooling (core/dispatch/pool.h). One OpenMP iteration
// per plane (an (n, c) pair): planes never share memory, so forward and backward are race-free
// and each backward sum runs in a fixed order. Arithmetic in opmath_t (f32 for 16-bit floats).
#include <cmath>
#include <limits>
#include <vector>

#include "core/dispatch/pool.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 14;  // below this many elements, stay serial

// ------------------------------------------------------------------ max
template <class T>
void max_pool_forward(T* y, int64_t* idx, const T* x, const Pool2dGeometry& g) {
  using A = opmath_t<T>;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
#pragma omp parallel for if (g.planes * in_plane > kParallelGrain)
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * in_plane;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const PoolWindow wh = pool_window(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const PoolWindow ww = pool_window(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w);
        A best = -std::numeric_limits<A>::infinity();
        int64_t best_at = wh.start * g.in_w + ww.start;
        for (int64_t h = wh.start; h < wh.end; ++h) {
          for (int64_t w = ww.start; w < ww.end; ++w) {
            const A v = static_cast<A>(xp[h * g.in_w + w]);
            // Strictly greater: the first of equal maxima wins. NaN wins, as in PyTorch.
            if (v > best || std::isnan(v)) {
              best = v;
              best_at = h * g.in_w + w;
            }
          }
        }
        y[p * out_plane + oh * g.out_w + ow] = static_cast<T>(best);
        idx[p * out_plane + oh * g.out_w + ow] = best_at;
      }
    }
  }
}

template <class T>
void max_pool_backward(T* dx, const T* dy, const int64_t* idx, const Pool2dGeometry& g) {
  using A = opmath_t<T>;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
#pragma omp parallel for if (g.planes * in_plane > kParallelGrain)
  for (int64_t p = 0; p < g.planes; ++p) {
    // Sum in opmath, then round once: overlapping windows may send several gradients to one input.
    std::vector<A> acc(in_plane, A(0));
    for (int64_t o = 0; o < out_plane; ++o) acc[idx[p * out_plane + o]] += static_cast<A>(dy[p * out_plane + o]);
    for (int64_t i = 0; i < in_plane; ++i) dx[p * in_plane + i] = static_cast<T>(acc[i]);
  }
}

// ------------------------------------------------------------------ average, adaptive average
// `win` is AvgPoolWindows or AdaptiveAvgWindows (core/dispatch/pool.h).
template <class T, class Windows>
void average_forward(T* y, const T* x, const Windows& win) {
  using A = opmath_t<T>;
  const Pool2dGeometry& g = win.g;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
#pragma omp parallel for if (g.planes * in_plane > kParallelGrain)
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * in_plane;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const AvgSpan sh = win.row(oh);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgSpan sw = win.col(ow);
        A sum = 0;
        for (int64_t h = sh.start; h < sh.end; ++h)
          for (int64_t w = sw.start; w < sw.end; ++w) sum += static_cast<A>(xp[h * g.in_w + w]);
        y[p * out_plane + oh * g.out_w + ow] = static_cast<T>(sum / static_cast<A>(sh.count * sw.count));
      }
    }
  }
}

template <class T, class Windows>
void average_backward(T* dx, const T* dy, const Windows& win) {
  using A = opmath_t<T>;
  const Pool2dGeometry& g = win.g;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
#pragma omp parallel for if (g.planes * in_plane > kParallelGrain)
  for (int64_t p = 0; p < g.planes; ++p) {
    std::vector<A> acc(in_plane, A(0));
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const AvgSpan sh = win.row(oh);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const AvgSpan sw = win.col(ow);
        const A share =
            static_cast<A>(dy[p * out_plane + oh * g.out_w + ow]) / static_cast<A>(sh.count * sw.count);
        for (int64_t h = sh.start; h < sh.end; ++h)
          for (int64_t w = sw.start; w < sw.end; ++w) acc[h * g.in_w + w] += share;
      }
    }
    for (int64_t i = 0; i < in_plane; ++i) dx[p * in_plane + i] = static_cast<T>(acc[i]);
  }
}

// ------------------------------------------------------------------ entry points
void check_planes(const char* what, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.is_contiguous() && b.is_contiguous() && a.dtype() == b.dtype(), what, ": ",
             b.meta_str(), " -> ", a.meta_str());
}

void max_pool2d_cpu(Tensor& out, Tensor& indices, const Tensor& input, const Pool2dGeometry& g) {
  check_planes("max_pool2d kernel", out, input);
  KILN_CHECK(indices.is_contiguous() && indices.dtype() == DType::i64, "max_pool2d kernel: indices ",
             indices.meta_str());
  KILN_DISPATCH_FLOATING(input.dtype(), "max_pool2d", [&] {
    max_pool_forward(out.data<scalar_t>(), indices.data<int64_t>(), input.data<scalar_t>(), g);
  });
}

void max_pool2d_backward_cpu(Tensor& grad_input, const Tensor& grad_out, const Tensor& indices,
                             const Pool2dGeometry& g) {
  check_planes("max_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "max_pool2d backward", [&] {
    max_pool_backward(grad_input.data<scalar_t>(), grad_out.data<scalar_t>(), indices.data<int64_t>(), g);
  });
}

void avg_pool2d_cpu(Tensor& out, const Tensor& input, const Pool2dGeometry& g, bool count_include_pad) {
  check_planes("avg_pool2d kernel", out, input);
  KILN_DISPATCH_FLOATING(input.dtype(), "avg_pool2d", [&] {
    average_forward(out.data<scalar_t>(), input.data<scalar_t>(), AvgPoolWindows{g, count_include_pad});
  });
}

void avg_pool2d_backward_cpu(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g,
                             bool count_include_pad) {
  check_planes("avg_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "avg_pool2d backward", [&] {
    average_backward(grad_input.data<scalar_t>(), grad_out.data<scalar_t>(),
                     AvgPoolWindows{g, count_include_pad});
  });
}

void adaptive_avg_pool2d_cpu(Tensor& out, const Tensor& input, const Pool2dGeometry& g) {
  check_planes("adaptive_avg_pool2d kernel", out, input);
  KILN_DISPATCH_FLOATING(input.dtype(), "adaptive_avg_pool2d", [&] {
    average_forward(out.data<scalar_t>(), input.data<scalar_t>(), AdaptiveAvgWindows{g});
  });
}

void adaptive_avg_pool2d_backward_cpu(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g) {
  check_planes("adaptive_avg_pool2d backward kernel", grad_input, grad_out);
  KILN_DISPATCH_FLOATING(grad_out.dtype(), "adaptive_avg_pool2d backward", [&] {
    average_backward(grad_input.data<scalar_t>(), grad_out.data<scalar_t>(), AdaptiveAvgWindows{g});
  });
}

}  // namespace

KILN_REGISTER_KERNEL(max_pool2d_stub, CPU, &max_pool2d_cpu);
KILN_REGISTER_KERNEL(max_pool2d_backward_stub, CPU, &max_pool2d_backward_cpu);
KILN_REGISTER_KERNEL(avg_pool2d_stub, CPU, &avg_pool2d_cpu);
KILN_REGISTER_KERNEL(avg_pool2d_backward_stub, CPU, &avg_pool2d_backward_cpu);
KILN_REGISTER_KERNEL(adaptive_avg_pool2d_stub, CPU, &adaptive_avg_pool2d_cpu);
KILN_REGISTER_KERNEL(adaptive_avg_pool2d_backward_stub, CPU, &adaptive_avg_pool2d_backward_cpu);

}  // namespace kiln
