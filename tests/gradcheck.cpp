#include "tests/gradcheck.h"

#include <cmath>
#include <random>
#include <sstream>

#include "core/autograd.h"
#include "core/generator.h"

namespace kiln::testing {

namespace {

// Element i (row-major) of a strided f64 CPU tensor.
double& element(const Tensor& t, int64_t i) {
  int64_t off = 0;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (i % t.size(d)) * t.stride(d);
    i /= t.size(d);
  }
  return static_cast<double*>(t.data_ptr())[off];
}

double objective(const TensorFn& f, const std::vector<Tensor>& inputs, const Tensor& w) {
  NoGradGuard guard;
  return sum(mul(f(inputs), w)).item<double>();
}

}  // namespace

::testing::AssertionResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs,
                                     GradcheckOptions opts) {
  for (const Tensor& x : inputs) {
    if (x.dtype() != DType::f64 || !x.device().is_cpu())
      return ::testing::AssertionFailure() << "gradcheck needs f64 CPU inputs, got " << x.meta_str();
    if (x.requires_grad() && x.is_leaf()) x.set_grad(Tensor());
  }
  Tensor y = f(inputs);
  Generator gen(1234);
  Tensor w = rand(y.shape(), {.dtype = DType::f64}, &gen);
  Tensor loss = sum(mul(y, w));
  loss.backward();

  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    // The gradient flows to the leaf behind a view; read it through the same view geometry.
    Tensor g = x.grad();
    for (int64_t i = 0; i < x.numel(); ++i) {
      double& v = element(x, i);
      const double saved = v;
      v = saved + opts.eps;
      const double plus = objective(f, inputs, w);
      v = saved - opts.eps;
      const double minus = objective(f, inputs, w);
      v = saved;
      const double numeric = (plus - minus) / (2 * opts.eps);
      const double analytic = g.defined() ? g.contiguous().data<double>()[i] : 0.0;
      if (!(std::abs(analytic - numeric) <= opts.atol + opts.rtol * std::abs(numeric))) {
        return ::testing::AssertionFailure()
               << "gradient mismatch for input " << k << " (" << x.meta_str() << ") element " << i
               << ": analytic " << analytic << ", numeric " << numeric;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

Tensor rand_input(const Shape& shape, double low, double high, uint64_t seed) {
  Generator gen(seed);
  Tensor t = rand(shape, {.dtype = DType::f64}, &gen);
  {
    NoGradGuard guard;
    t = add(mul(t, high - low), low);
  }
  t.requires_grad_(true);
  return t;
}

std::vector<double> uniform_values(int64_t n, double lo, double hi, uint32_t seed, double gap) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v;
  while (static_cast<int64_t>(v.size()) < n) {
    const double x = dist(rng);
    if (std::abs(x) >= gap) v.push_back(x);
  }
  return v;
}

bool has_cuda() { return cuda_device_count() > 0; }

}  // namespace kiln::testing
