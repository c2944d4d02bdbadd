// CPU softmax, log-softmax and cross-entropy (core/dispatch/softmax.h). Rows are stabilised
// by their max; sums over classes run in blocks of kBlock so long f32 rows (a 50257-word
// vocabulary) stay accurate. Arithmetic in opmath_t: f32 for the 16-bit floats.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/dispatch/softmax.h"
#include "kernels/softmax_common.h"

namespace kiln {
namespace {

constexpr int64_t kBlock = 256;
constexpr int64_t kParallelGrain = 1 << 14;  // below this many elements, stay serial

template <class A>
constexpr A kNegInf = -std::numeric_limits<A>::infinity();

// sum of f(k) over k in [0, n), in blocks.
template <class A, class F>
A blocked_sum(int64_t n, const F& f) {
  A total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    A part = 0;
    const int64_t e = std::min(n, b + kBlock);
    for (int64_t k = b; k < e; ++k) part += f(k);
    total += part;
  }
  return total;
}

template <class A, class T>
A row_max(const T* x, int64_t n) {
  A m = kNegInf<A>;
  for (int64_t c = 0; c < n; ++c) m = std::max(m, static_cast<A>(x[c]));
  return m;
}

// log(sum(exp(x))) over a row, stabilised by the row's max.
template <class A, class T>
A row_log_sum_exp(const T* x, int64_t n) {
  const A m = row_max<A>(x, n);
  return m + std::log(blocked_sum<A>(n, [&](int64_t c) { return std::exp(static_cast<A>(x[c]) - m); }));
}

// ------------------------------------------------------------------ softmax forward
template <class T>
void softmax_rows(T* y, const T* x, int64_t rows, int64_t classes, bool log) {
  using A = opmath_t<T>;
#pragma omp parallel for if (rows * classes > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * classes;
    T* yr = y + r * classes;
    const A m = row_max<A>(xr, classes);
    const A s = blocked_sum<A>(classes, [&](int64_t c) { return std::exp(static_cast<A>(xr[c]) - m); });
    const A log_s = std::log(s);
    for (int64_t c = 0; c < classes; ++c) {
      const A d = static_cast<A>(xr[c]) - m;
      yr[c] = static_cast<T>(log ? d - log_s : std::exp(d) / s);
    }
  }
}

// classes strided by inner: each outer slice walks its [classes, inner] block row by row,
// keeping one max and one sum per inner position (contiguous loads throughout).
template <class T>
void softmax_strided(T* y, const T* x, int64_t outer, int64_t classes, int64_t inner, bool log) {
  using A = opmath_t<T>;
#pragma omp parallel for if (outer * classes * inner > kParallelGrain)
  for (int64_t o = 0; o < outer; ++o) {
    const T* xo = x + o * classes * inner;
    T* yo = y + o * classes * inner;
    std::vector<A> m(inner, kNegInf<A>), s(inner, A(0));
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t i = 0; i < inner; ++i) m[i] = std::max(m[i], static_cast<A>(xo[c * inner + i]));
    for (int64_t c = 0; c < classes; ++c)
      for (int64_t i = 0; i < inner; ++i) s[i] += std::exp(static_cast<A>(xo[c * inner + i]) - m[i]);
    for (int64_t c = 0; c < classes; ++c) {
      for (int64_t i = 0; i < inner; ++i) {
        const A d = static_cast<A>(xo[c * inner + i]) - m[i];
        yo[c * inner + i] = static_cast<T>(log ? d - std::log(s[i]) : std::exp(d) / s[i]);
      }
    }
  }
}

void softmax_kernel(Tensor& out, const Tensor& in, int64_t outer, int64_t classes, int64_t inner,
                    bool log) {
  check_softmax_args(out, in);
  KILN_DISPATCH_FLOATING(in.dtype(), "softmax", [&] {
    const auto* x = static_cast<const scalar_t*>(in.data_ptr());
    auto* y = static_cast<scalar_t*>(out.data_ptr());
    if (inner == 1) softmax_rows(y, x, outer, classes, log);
    else softmax_strided(y, x, outer, classes, inner, log);
  });
}

// ------------------------------------------------------------------ softmax backward
// softmax:     dx = y * (g - sum(g * y))
// log_softmax: dx = g - exp(y) * sum(g)
template <class T>
void softmax_backward_typed(T* gi, const T* go, const T* y, int64_t outer, int64_t classes,
                            int64_t inner, bool log) {
  using A = opmath_t<T>;
#pragma omp parallel for if (outer * classes * inner > kParallelGrain)
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t base = o * classes * inner;
    std::vector<A> dot(inner, A(0));
    if (inner == 1) {
      dot[0] = blocked_sum<A>(classes, [&](int64_t c) {
        const A g = static_cast<A>(go[base + c]);
        return log ? g : g * static_cast<A>(y[base + c]);
      });
    } else {
      for (int64_t c = 0; c < classes; ++c) {
        for (int64_t i = 0; i < inner; ++i) {
          const A g = static_cast<A>(go[base + c * inner + i]);
          dot[i] += log ? g : g * static_cast<A>(y[base + c * inner + i]);
        }
      }
    }
    for (int64_t c = 0; c < classes; ++c) {
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t k = base + c * inner + i;
        const A g = static_cast<A>(go[k]), yk = static_cast<A>(y[k]);
        gi[k] = static_cast<T>(log ? g - std::exp(yk) * dot[i] : yk * (g - dot[i]));
      }
    }
  }
}

void softmax_backward_kernel(Tensor& grad_in, const Tensor& grad_out, const Tensor& out,
                             int64_t outer, int64_t classes, int64_t inner, bool log) {
  check_softmax_backward_args(grad_in, grad_out, out);
  KILN_DISPATCH_FLOATING(out.dtype(), "softmax backward", [&] {
    softmax_backward_typed(static_cast<scalar_t*>(grad_in.data_ptr()),
                           static_cast<const scalar_t*>(grad_out.data_ptr()),
                           static_cast<const scalar_t*>(out.data_ptr()), outer, classes, inner, log);
  });
}

// ------------------------------------------------------------------ cross-entropy
// loss = (1-e) * (lse - x[t]) + e * (lse - mean(x)); 0 for ignored rows.
template <class T, class Idx>
void cross_entropy_typed(opmath_t<T>* losses, const T* logits, const Idx* targets, int64_t rows,
                         int64_t classes, int64_t ignore_index, double smoothing) {
  using A = opmath_t<T>;
  const A e = static_cast<A>(smoothing);
#pragma omp parallel for if (rows * classes > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = static_cast<int64_t>(targets[r]);
    if (t == ignore_index) {
      losses[r] = 0;
      continue;
    }
    const T* x = logits + r * classes;
    const A lse = row_log_sum_exp<A>(x, classes);
    const A mean_x = e > 0 ? blocked_sum<A>(classes, [&](int64_t c) { return static_cast<A>(x[c]); }) / classes
                           : A(0);  // only smoothing reads it
    losses[r] = cross_entropy_loss(lse, static_cast<A>(x[t]), mean_x, e);
  }
}

// dlogits = g * (softmax(x) - (1-e) * onehot(t) - e/C); zero for ignored rows.
template <class T, class Idx>
void cross_entropy_backward_typed(T* dlogits, const T* logits, const Idx* targets,
                                  const opmath_t<T>* grad_losses, int64_t grad_stride, int64_t rows,
                                  int64_t classes, int64_t ignore_index, double smoothing) {
  using A = opmath_t<T>;
  const A e = static_cast<A>(smoothing), off = e / static_cast<A>(classes);
#pragma omp parallel for if (rows * classes > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = static_cast<int64_t>(targets[r]);
    T* d = dlogits + r * classes;
    if (t == ignore_index) {
      std::fill(d, d + classes, static_cast<T>(0.0f));
      continue;
    }
    const T* x = logits + r * classes;
    const A g = grad_losses[r * grad_stride];
    const A lse = row_log_sum_exp<A>(x, classes);
    for (int64_t c = 0; c < classes; ++c)
      d[c] = static_cast<T>(cross_entropy_grad(g, std::exp(static_cast<A>(x[c]) - lse), c == t, e, off));
  }
}

void cross_entropy_kernel(Tensor& losses, const Tensor& logits, const Tensor& targets,
                          int64_t ignore_index, double label_smoothing) {
  check_cross_entropy_args(logits, targets, losses, "cross_entropy kernel");
  KILN_CHECK(losses.is_contiguous(), "cross_entropy kernel: losses ", losses.meta_str());
  const int64_t rows = logits.size(0), classes = logits.size(1);
  KILN_DISPATCH_FLOATING(logits.dtype(), "cross_entropy", [&] {
    using T = scalar_t;
    KILN_DISPATCH_INDEX(targets.dtype(), "cross_entropy", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      check_class_targets(t, rows, classes, ignore_index, "cross_entropy", "classes");
      cross_entropy_typed(static_cast<opmath_t<T>*>(losses.data_ptr()),
                          static_cast<const T*>(logits.data_ptr()), t, rows, classes, ignore_index,
                          label_smoothing);
    });
  });
}

void cross_entropy_backward_kernel(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                                   const Tensor& grad_losses, int64_t ignore_index,
                                   double label_smoothing) {
  check_cross_entropy_backward_args(dlogits, logits, targets, grad_losses);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  KILN_DISPATCH_FLOATING(logits.dtype(), "cross_entropy backward", [&] {
    using T = scalar_t;
    KILN_DISPATCH_INDEX(targets.dtype(), "cross_entropy backward", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      check_class_targets(t, rows, classes, ignore_index, "cross_entropy", "classes");
      cross_entropy_backward_typed(static_cast<T*>(dlogits.data_ptr()),
                                   static_cast<const T*>(logits.data_ptr()), t,
                                   static_cast<const opmath_t<T>*>(grad_losses.data_ptr()),
                                   grad_losses.stride(0), rows, classes, ignore_index,
                                   label_smoothing);
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(softmax_stub, CPU, &softmax_kernel);
KILN_REGISTER_KERNEL(softmax_backward_stub, CPU, &softmax_backward_kernel);
KILN_REGISTER_KERNEL(cross_entropy_stub, CPU, &cross_entropy_kernel);
KILN_REGISTER_KERNEL(cross_entropy_backward_stub, CPU, &cross_entropy_backward_kernel);

}  // namespace kiln
