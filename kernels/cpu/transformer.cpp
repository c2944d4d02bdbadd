// CPU kernels of the transformer ops (core/dispatch/transformer.h): embedding, layer norm
// (plain and with the residual add) and the fused classifier. Row and column sums accumulate
// in double whatever the input type, so these are the accurate reference the CUDA kernels
// are tested against; elementwise work runs in opmath_t (f32 for the 16-bit floats).
//
// Every reduction has a fixed order that does not depend on the thread count: rows are
// independent, and column sums (embedding and layer-norm parameter gradients) give each
// OpenMP iteration a block of columns that it walks down in row order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/dispatch/transformer.h"
#include "kernels/cpu/vec_math.h"
#include "kernels/softmax_common.h"
#include "kernels/transformer_common.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 14;  // below this many elements, stay serial
constexpr int64_t kColumnBlock = 64;         // columns per iteration of a column sum

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ================================================================ embedding
template <class Idx>
void check_indices(const Idx* idx, int64_t n, int64_t vocab, const Tensor& weight) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = static_cast<int64_t>(idx[i]);
    KILN_CHECK(v >= 0 && v < vocab, "embedding: index ", v, " at position ", i,
               " is out of range for a vocabulary of ", vocab, " rows (weight ", weight.meta_str(), ")");
  }
}

// Copies whole rows as bytes: any element type.
template <class Idx>
void embedding_rows(char* out, const char* table, const Idx* idx, int64_t n, int64_t row_bytes) {
#pragma omp parallel for if (n * row_bytes > 4 * kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    std::copy_n(table + static_cast<int64_t>(idx[i]) * row_bytes, row_bytes, out + i * row_bytes);
}

void embedding_cpu(Tensor& out, const Tensor& weight, const Tensor& indices) {
  check_embedding_args(out, weight, indices, "embedding kernel");
  const int64_t n = out.size(0), vocab = weight.size(0);
  const auto row_bytes = static_cast<int64_t>(weight.size(1) * weight.element_size());
  KILN_DISPATCH_INDEX(indices.dtype(), "embedding", [&] {
    const auto* idx = static_cast<const scalar_t*>(indices.data_ptr());
    check_indices(idx, n, vocab, weight);  // before the parallel loop, which must not throw
    embedding_rows(static_cast<char*>(out.data_ptr()), static_cast<const char*>(weight.data_ptr()), idx, n,
                   row_bytes);
  });
}

// Each iteration owns a block of columns and walks the positions in order, adding each row
// of grad_out into the block of its token's row: every sum has one fixed order.
template <class T, class Idx>
void embedding_backward_typed(T* gw, const T* go, const Idx* idx, int64_t n, int64_t vocab,
                              int64_t channels) {
  using A = opmath_t<T>;
  const int64_t blocks = ceil_div(channels, kColumnBlock);
#pragma omp parallel for if (n * channels > kParallelGrain)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kColumnBlock, width = std::min(kColumnBlock, channels - c0);
    // 16-bit weights sum in f32 and round once; f32 and f64 sum in place.
    std::vector<A> scratch(std::is_same_v<T, A> ? 0 : vocab * width, A(0));
    auto cell = [&](int64_t v, int64_t k) -> A& {
      if constexpr (std::is_same_v<T, A>) return gw[v * channels + c0 + k];
      else return scratch[v * width + k];
    };
    if constexpr (std::is_same_v<T, A>)
      for (int64_t v = 0; v < vocab; ++v) std::fill_n(gw + v * channels + c0, width, T(0));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = static_cast<int64_t>(idx[i]);
      const T* g = go + i * channels + c0;
      for (int64_t k = 0; k < width; ++k) cell(v, k) += static_cast<A>(g[k]);
    }
    if constexpr (!std::is_same_v<T, A>)
      for (int64_t v = 0; v < vocab; ++v)
        for (int64_t k = 0; k < width; ++k) gw[v * channels + c0 + k] = static_cast<T>(scratch[v * width + k]);
  }
}

void embedding_backward_cpu(Tensor& grad_weight, const Tensor& grad_out, const Tensor& indices) {
  check_embedding_args(grad_out, grad_weight, indices, "embedding backward kernel");
  const int64_t n = grad_out.size(0), vocab = grad_weight.size(0), channels = grad_weight.size(1);
  KILN_DISPATCH_FLOATING(grad_weight.dtype(), "embedding backward", [&] {
    using T = scalar_t;
    KILN_DISPATCH_INDEX(indices.dtype(), "embedding backward", [&] {
      const auto* idx = static_cast<const scalar_t*>(indices.data_ptr());
      check_indices(idx, n, vocab, grad_weight);
      embedding_backward_typed(static_cast<T*>(grad_weight.data_ptr()),
                               static_cast<const T*>(grad_out.data_ptr()), idx, n, vocab, channels);
    });
  });
}

// ================================================================ layer norm
// Two passes over the row (mean, then the squares of the deviations), in double.
template <class T>
void row_stats(const T* x, int64_t c, double eps, double& mean, double& rstd) {
  double s = 0;
  for (int64_t k = 0; k < c; ++k) s += static_cast<double>(x[k]);
  mean = s / static_cast<double>(c);
  double sq = 0;
  for (int64_t k = 0; k < c; ++k) {
    const double d = static_cast<double>(x[k]) - mean;
    sq += d * d;
  }
  rstd = 1.0 / std::sqrt(sq / static_cast<double>(c) + eps);
}

template <class T>
void layer_norm_typed(T* y, opmath_t<T>* mean, opmath_t<T>* rstd, T* sum, const T* x, const T* residual,
                      const opmath_t<T>* weight, const opmath_t<T>* bias, int64_t rows, int64_t c,
                      double eps) {
  using A = opmath_t<T>;
#pragma omp parallel for if (rows * c > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * c;
    if (residual) {
      // The sum is rounded to T first: what is normalised is what is stored (and saved).
      T* sr = sum + r * c;
      const T* rr = residual + r * c;
      for (int64_t k = 0; k < c; ++k) sr[k] = static_cast<T>(static_cast<A>(xr[k]) + static_cast<A>(rr[k]));
      xr = sr;
    }
    double m = 0, is = 0;
    row_stats(xr, c, eps, m, is);
    mean[r] = static_cast<A>(m);
    rstd[r] = static_cast<A>(is);
    const A ma = static_cast<A>(m), isa = static_cast<A>(is);
    T* yr = y + r * c;
    for (int64_t k = 0; k < c; ++k) {
      const A xhat = (static_cast<A>(xr[k]) - ma) * isa;
      yr[k] = static_cast<T>(xhat * (weight ? weight[k] : A(1)) + (bias ? bias[k] : A(0)));
    }
  }
}

void layer_norm_cpu(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                    const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  check_layer_norm_args(y, mean, rstd, sum, x, residual, weight, bias);
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    layer_norm_typed(static_cast<T*>(y.data_ptr()), static_cast<A*>(mean.data_ptr()),
                     static_cast<A*>(rstd.data_ptr()), data_or_null_mut<T>(sum),
                     static_cast<const T*>(x.data_ptr()), data_or_null_mut<const T>(residual),
                     data_or_null_mut<const A>(weight), data_or_null_mut<const A>(bias), x.size(0),
                     x.size(1), eps);
  });
}

template <class T>
void layer_norm_backward_typed(T* dx, opmath_t<T>* dweight, opmath_t<T>* dbias, const T* dy, const T* x,
                               const opmath_t<T>* mean, const opmath_t<T>* rstd, const opmath_t<T>* weight,
                               int64_t rows, int64_t c) {
  using A = opmath_t<T>;
  if (dx) {
#pragma omp parallel for if (rows * c > kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * c;
      const T* dyr = dy + r * c;
      const A m = mean[r], is = rstd[r];
      double s = 0, sx = 0;  // sum(w dy), sum(w dy xhat)
      for (int64_t k = 0; k < c; ++k) {
        const A wdy = static_cast<A>(dyr[k]) * (weight ? weight[k] : A(1));
        const A xhat = (static_cast<A>(xr[k]) - m) * is;
        s += wdy;
        sx += static_cast<double>(wdy) * static_cast<double>(xhat);
      }
      const A mean_wdy = static_cast<A>(s / static_cast<double>(c));
      const A mean_wdy_xhat = static_cast<A>(sx / static_cast<double>(c));
      T* dxr = dx + r * c;
      for (int64_t k = 0; k < c; ++k) {
        const A wdy = static_cast<A>(dyr[k]) * (weight ? weight[k] : A(1));
        const A xhat = (static_cast<A>(xr[k]) - m) * is;
        dxr[k] = static_cast<T>(is * (wdy - mean_wdy - xhat * mean_wdy_xhat));
      }
    }
  }
  if (dweight || dbias) {
    const int64_t blocks = ceil_div(c, kColumnBlock);
#pragma omp parallel for if (rows * c > kParallelGrain)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * kColumnBlock, width = std::min(kColumnBlock, c - c0);
      double sw[kColumnBlock] = {}, sb[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const A m = mean[r], is = rstd[r];
        const T* xr = x + r * c + c0;
        const T* dyr = dy + r * c + c0;
        for (int64_t k = 0; k < width; ++k) {
          const double g = static_cast<double>(dyr[k]);
          sw[k] += g * static_cast<double>((static_cast<A>(xr[k]) - m) * is);
          sb[k] += g;
        }
      }
      for (int64_t k = 0; k < width; ++k) {
        if (dweight) dweight[c0 + k] = static_cast<A>(sw[k]);
        if (dbias) dbias[c0 + k] = static_cast<A>(sb[k]);
      }
    }
  }
}

void layer_norm_backward_cpu(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy, const Tensor& x,
                             const Tensor& mean, const Tensor& rstd, const Tensor& weight) {
  check_layer_norm_backward_args(dx, dweight, dbias, dy, x, mean, rstd, weight);
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm backward", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    layer_norm_backward_typed(data_or_null_mut<T>(dx), data_or_null_mut<A>(dweight),
                              data_or_null_mut<A>(dbias), static_cast<const T*>(dy.data_ptr()),
                              static_cast<const T*>(x.data_ptr()), static_cast<const A*>(mean.data_ptr()),
                              static_cast<const A*>(rstd.data_ptr()), data_or_null_mut<const A>(weight),
                              x.size(0), x.size(1));
  });
}

// ================================================================ fused classifier
// Per row: the max, then e_c = exp(x_c - max) once into a per-thread buffer (vectorised:
// cpu::exp_nonpos), their sum, and dlogits = (e_c / sum - [c == t]) * scale from the buffer.
// Partial sums in 8 lanes let the max and the f64 sum vectorise; their order is fixed, so
// the result does not depend on the thread count.
constexpr int64_t kLanes = 8;

template <class A>
A row_max(const A* x, int64_t n) {
  A lane[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) lane[k] = -std::numeric_limits<A>::infinity();
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lane[k] = std::max(lane[k], x[c + k]);
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t k = 0; k < kLanes; ++k) m = std::max(m, lane[k]);
  for (; c < n; ++c) m = std::max(m, x[c]);
  return m;
}

template <class A>
double row_sum(const A* e, int64_t n) {
  double lane[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) lane[k] += static_cast<double>(e[c + k]);
  double s = 0;
  for (int64_t k = 0; k < kLanes; ++k) s += lane[k];
  for (; c < n; ++c) s += static_cast<double>(e[c]);
  return s;
}

template <class T, class Idx>
void fused_cross_entropy_typed(opmath_t<T>* losses, T* dlogits, const T* logits, const Idx* targets,
                               opmath_t<T> scale, int64_t rows, int64_t classes, int64_t valid,
                               int64_t ignore_index) {
  using A = opmath_t<T>;
#pragma omp parallel if (rows * classes > kParallelGrain)
  {
    std::vector<A> xbuf, e(static_cast<size_t>(valid));
#pragma omp for
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = static_cast<int64_t>(targets[r]);
      T* d = dlogits ? dlogits + r * classes : nullptr;
      if (t == ignore_index) {
        losses[r] = 0;
        if (d) std::fill_n(d, classes, static_cast<T>(0.0f));
        continue;
      }
      const A* x;
      if constexpr (std::is_same_v<T, A>) {
        x = logits + r * classes;
      } else {
        xbuf.resize(static_cast<size_t>(valid));
        for (int64_t c = 0; c < valid; ++c) xbuf[c] = static_cast<A>(logits[r * classes + c]);
        x = xbuf.data();
      }
      const A m = row_max(x, valid);
      for (int64_t c = 0; c < valid; ++c) e[c] = cpu::exp_nonpos(x[c] - m);
      const double s = row_sum(e.data(), valid);
      const A lse = m + static_cast<A>(std::log(s));
      losses[r] = lse - x[t];
      if (!d) continue;
      const A inv_s = static_cast<A>(1.0 / s);
      for (int64_t c = 0; c < valid; ++c) d[c] = static_cast<T>(e[c] * inv_s * scale);
      d[t] = static_cast<T>((e[t] * inv_s - A(1)) * scale);
      std::fill(d + valid, d + classes, static_cast<T>(0.0f));
    }
  }
}

void fused_cross_entropy_cpu(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                             const Tensor& grad_scale, int64_t valid_classes, int64_t ignore_index) {
  check_fused_cross_entropy_args(losses, dlogits, logits, targets, grad_scale, valid_classes);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  KILN_DISPATCH_FLOATING(logits.dtype(), "fused_cross_entropy", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const A scale = *static_cast<const A*>(grad_scale.data_ptr());
    KILN_DISPATCH_INDEX(targets.dtype(), "fused_cross_entropy", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      check_class_targets(t, rows, valid_classes, ignore_index, "fused_cross_entropy", "valid classes");
      fused_cross_entropy_typed(static_cast<A*>(losses.data_ptr()), data_or_null_mut<T>(dlogits),
                                static_cast<const T*>(logits.data_ptr()), t, scale, rows, classes,
                                valid_classes, ignore_index);
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(embedding_stub, CPU, &embedding_cpu);
KILN_REGISTER_KERNEL(embedding_backward_stub, CPU, &embedding_backward_cpu);
KILN_REGISTER_KERNEL(layer_norm_stub, CPU, &layer_norm_cpu);
KILN_REGISTER_KERNEL(layer_norm_backward_stub, CPU, &layer_norm_backward_cpu);
KILN_REGISTER_KERNEL(fused_cross_entropy_stub, CPU, &fused_cross_entropy_cpu);

}  // namespace kiln
