// CPU batch-norm kernels (core/dispatch/norm.h). The input is [n, channels, inner]: channel c
// is n runs of `inner` contiguous values. Reductions run one channel per OpenMP iteration and
// accumulate in double whatever the input type, so the CPU result is the accurate reference
// the CUDA kernels are tested against; elementwise passes run in opmath_t.
#include <cstdint>

#include "core/dispatch/norm.h"
#include "kernels/norm_common.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 14;  // below this many elements, stay serial

// ------------------------------------------------------------------ statistics
template <class T>
void stats_typed(opmath_t<T>* mean, opmath_t<T>* var, const T* x, NormGeometry g) {
  using A = opmath_t<T>;
  const double count = static_cast<double>(g.per_channel());
#pragma omp parallel for if (g.n * g.channels * g.inner > kParallelGrain)
  for (int64_t c = 0; c < g.channels; ++c) {
    double sum = 0;
    for (int64_t i = 0; i < g.n; ++i) {
      const T* run = x + (i * g.channels + c) * g.inner;
      for (int64_t k = 0; k < g.inner; ++k) sum += static_cast<double>(run[k]);
    }
    const double m = sum / count;
    double sq = 0;
    for (int64_t i = 0; i < g.n; ++i) {
      const T* run = x + (i * g.channels + c) * g.inner;
      for (int64_t k = 0; k < g.inner; ++k) {
        const double d = static_cast<double>(run[k]) - m;
        sq += d * d;
      }
    }
    mean[c] = static_cast<A>(m);
    var[c] = static_cast<A>(sq / count);
  }
}

void stats_cpu(Tensor& mean, Tensor& var, const Tensor& x, NormGeometry g) {
  check_norm_input(x, g, "batch_norm_stats kernel");
  check_per_channel({&mean, &var}, x, g, "batch_norm_stats kernel");
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_stats", [&] {
    using A = opmath_t<scalar_t>;
    stats_typed(static_cast<A*>(mean.data_ptr()), static_cast<A*>(var.data_ptr()),
                static_cast<const scalar_t*>(x.data_ptr()), g);
  });
}

// ------------------------------------------------------------------ normalise
template <class T>
void apply_typed(T* y, const T* x, const opmath_t<T>* mean, const opmath_t<T>* invstd,
                 const opmath_t<T>* weight, const opmath_t<T>* bias, NormGeometry g) {
  using A = opmath_t<T>;
  const int64_t runs = g.n * g.channels;
#pragma omp parallel for if (runs * g.inner > kParallelGrain)
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t c = r % g.channels;
    const A m = mean[c];
    const A scale = invstd[c] * (weight ? weight[c] : A(1));
    const A shift = bias ? bias[c] : A(0);
    const T* xr = x + r * g.inner;
    T* yr = y + r * g.inner;
    for (int64_t k = 0; k < g.inner; ++k)
      yr[k] = static_cast<T>((static_cast<A>(xr[k]) - m) * scale + shift);
  }
}

void apply_cpu(Tensor& y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
               const Tensor& weight, const Tensor& bias, NormGeometry g) {
  const char* what = "batch_norm_apply kernel";
  check_norm_input(x, g, what);
  check_norm_input(y, g, what);
  KILN_CHECK(y.dtype() == x.dtype(), what, ": ", x.meta_str(), " -> ", y.meta_str());
  check_per_channel({&mean, &invstd, &weight, &bias}, x, g, what);
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_apply", [&] {
    using A = opmath_t<scalar_t>;
    apply_typed(static_cast<scalar_t*>(y.data_ptr()), static_cast<const scalar_t*>(x.data_ptr()),
                data_or_null<A>(mean), data_or_null<A>(invstd), data_or_null<A>(weight),
                data_or_null<A>(bias), g);
  });
}

// ------------------------------------------------------------------ backward
template <class T>
void backward_reduce_typed(opmath_t<T>* sum_dy, opmath_t<T>* sum_dy_xmu, const T* dy, const T* x,
                           const opmath_t<T>* mean, NormGeometry g) {
  using A = opmath_t<T>;
#pragma omp parallel for if (g.n * g.channels * g.inner > kParallelGrain)
  for (int64_t c = 0; c < g.channels; ++c) {
    const double m = static_cast<double>(mean[c]);
    double s = 0, sx = 0;
    for (int64_t i = 0; i < g.n; ++i) {
      const int64_t base = (i * g.channels + c) * g.inner;
      for (int64_t k = 0; k < g.inner; ++k) {
        const double d = static_cast<double>(dy[base + k]);
        s += d;
        sx += d * (static_cast<double>(x[base + k]) - m);
      }
    }
    sum_dy[c] = static_cast<A>(s);
    sum_dy_xmu[c] = static_cast<A>(sx);
  }
}

void backward_reduce_cpu(Tensor& sum_dy, Tensor& sum_dy_xmu, const Tensor& dy, const Tensor& x,
                         const Tensor& mean, NormGeometry g) {
  const char* what = "batch_norm_backward_reduce kernel";
  check_norm_input(x, g, what);
  check_norm_input(dy, g, what);
  KILN_CHECK(dy.dtype() == x.dtype(), what, ": dy ", dy.meta_str(), ", x ", x.meta_str());
  check_per_channel({&sum_dy, &sum_dy_xmu, &mean}, x, g, what);
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_backward_reduce", [&] {
    using A = opmath_t<scalar_t>;
    backward_reduce_typed(static_cast<A*>(sum_dy.data_ptr()), static_cast<A*>(sum_dy_xmu.data_ptr()),
                          static_cast<const scalar_t*>(dy.data_ptr()),
                          static_cast<const scalar_t*>(x.data_ptr()), data_or_null<A>(mean), g);
  });
}

template <class T>
void backward_input_typed(T* dx, const T* dy, const T* x, const opmath_t<T>* mean,
                          const opmath_t<T>* invstd, const opmath_t<T>* weight,
                          const opmath_t<T>* sum_dy, const opmath_t<T>* sum_dy_xmu, NormGeometry g) {
  using A = opmath_t<T>;
  const int64_t runs = g.n * g.channels;
  const A count = static_cast<A>(g.per_channel());
#pragma omp parallel for if (runs * g.inner > kParallelGrain)
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t c = r % g.channels;
    const A is = invstd[c];
    const A scale = is * (weight ? weight[c] : A(1));
    const int64_t base = r * g.inner;
    if (!sum_dy) {  // eval: the statistics are constants
      for (int64_t k = 0; k < g.inner; ++k)
        dx[base + k] = static_cast<T>(static_cast<A>(dy[base + k]) * scale);
      continue;
    }
    const A m = mean[c];
    const A mean_dy = sum_dy[c] / count;
    const A proj = sum_dy_xmu[c] / count * is * is;
    for (int64_t k = 0; k < g.inner; ++k) {
      const A xmu = static_cast<A>(x[base + k]) - m;
      dx[base + k] = static_cast<T>((static_cast<A>(dy[base + k]) - mean_dy - xmu * proj) * scale);
    }
  }
}

void backward_input_cpu(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& mean,
                        const Tensor& invstd, const Tensor& weight, const Tensor& sum_dy,
                        const Tensor& sum_dy_xmu, NormGeometry g) {
  const char* what = "batch_norm_backward_input kernel";
  check_norm_input(x, g, what);
  check_norm_input(dy, g, what);
  check_norm_input(dx, g, what);
  KILN_CHECK(dy.dtype() == x.dtype() && dx.dtype() == x.dtype(), what, ": dy ", dy.meta_str(),
             ", x ", x.meta_str(), " -> dx ", dx.meta_str());
  KILN_CHECK(sum_dy.defined() == sum_dy_xmu.defined(), what, ": give both sums or neither");
  check_per_channel({&mean, &invstd, &weight, &sum_dy, &sum_dy_xmu}, x, g, what);
  KILN_DISPATCH_FLOATING(x.dtype(), "batch_norm_backward_input", [&] {
    using A = opmath_t<scalar_t>;
    backward_input_typed(static_cast<scalar_t*>(dx.data_ptr()),
                         static_cast<const scalar_t*>(dy.data_ptr()),
                         static_cast<const scalar_t*>(x.data_ptr()), data_or_null<A>(mean),
                         data_or_null<A>(invstd), data_or_null<A>(weight), data_or_null<A>(sum_dy),
                         data_or_null<A>(sum_dy_xmu), g);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(batch_norm_stats_stub, CPU, &stats_cpu);
KILN_REGISTER_KERNEL(batch_norm_apply_stub, CPU, &apply_cpu);
KILN_REGISTER_KERNEL(batch_norm_backward_reduce_stub, CPU, &backward_reduce_cpu);
KILN_REGISTER_KERNEL(batch_norm_backward_input_stub, CPU, &backward_input_cpu);

}  // namespace kiln
