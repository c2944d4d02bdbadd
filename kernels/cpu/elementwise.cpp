// CPU elementwise kernels: unary, binary and where. Operands arrive broadcast to the output
// shape (core/ops/elementwise.cpp does promotion and broadcasting); each kernel walks them
// through an ElementwiseLayout, with a dense fast path, and computes in compute_t<T>.
// The formulas mirror kernels/cuda/elementwise.cu; tests/test_elementwise_cuda.cpp keeps
// the two in agreement.
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/dispatch/elementwise.h"
#include "core/elementwise_layout.h"
#include "kernels/gelu_common.h"

namespace kiln {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

// Floats compute in opmath (f32 for the 16-bit types). Integers, bool included, compute in
// int64 and wrap on the way back like PyTorch; bool results are "nonzero".
template <class T>
using compute_t = std::conditional_t<std::is_integral_v<T>, int64_t, opmath_t<T>>;

// Integer bounds and exponents arrive as doubles; +-inf (a missing clamp bound) saturates.
int64_t saturate_to_int64(double v) {
  if (v <= -9.2233720368547758e18) return std::numeric_limits<int64_t>::min();
  if (v >= 9.2233720368547758e18) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(v);
}

// x^e for integers by repeated squaring; negative exponents truncate like 1 / x^-e.
int64_t int_pow(int64_t x, int64_t e) {
  if (e < 0) return x == 1 ? 1 : (x == -1 ? ((e & 1) ? -1 : 1) : 0);
  int64_t r = 1;
  while (e > 0) {
    if (e & 1) r *= x;
    x *= x;
    e >>= 1;
  }
  return r;
}

// out[i] = f(in0[i], in1[i], ...) over a layout. The dense path indexes directly (and
// vectorises); the strided path walks rows of the innermost dim, computing each row's base
// offsets once rather than per element. K indexes the inputs: input K is operand K + 1.
template <class>
using TensorFor = Tensor;  // one Tensor parameter per input type

template <class Tout, class... Tin, class F, std::size_t... K>
void elementwise_loop_impl(Tensor& out, F f, std::index_sequence<K...>,
                           const TensorFor<Tin>&... in) {
  constexpr int N = 1 + sizeof...(Tin);
  const ElementwiseLayout<N> L = make_elementwise_layout<N>({&out, &in...});
  if (L.numel == 0) return;
  Tout* o = static_cast<Tout*>(out.data_ptr());
  const std::tuple<const Tin*...> p(static_cast<const Tin*>(in.data_ptr())...);
  if (L.contiguous) {
#pragma omp parallel for if (L.numel >= kParallelGrain) schedule(static)
    for (int64_t i = 0; i < L.numel; ++i) o[i] = f(std::get<K>(p)[i]...);
    return;
  }
  const int64_t inner = L.ndim > 0 ? L.sizes[0] : 1;
  const int64_t rows = L.numel / inner;
#pragma omp parallel for if (L.numel >= kParallelGrain) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off[N];
    for (int k = 0; k < N; ++k) off[k] = L.offset(k, r * inner);
    for (int64_t j = 0; j < inner; ++j) {
      o[off[0]] = f(std::get<K>(p)[off[K + 1]]...);
      for (int k = 0; k < N; ++k) off[k] += L.strides[k][0];
    }
  }
}

template <class Tout, class... Tin, class F>
void elementwise_loop(Tensor& out, F f, const TensorFor<Tin>&... in) {
  elementwise_loop_impl<Tout, Tin...>(out, f, std::index_sequence_for<Tin...>{}, in...);
}

// Loads T, applies op in compute_t<T>, stores T.
template <class T, class Op>
auto in_compute_type(Op op) {
  return [op](auto... x) { return static_cast<T>(op(static_cast<compute_t<T>>(x)...)); };
}

// ---- unary

template <class T>
void unary_typed(UnaryOp op, Tensor& out, const Tensor& in, double a, double b) {
  using C = compute_t<T>;
  auto run = [&](auto fn) { elementwise_loop<T, T>(out, in_compute_type<T>(fn), in); };
  if constexpr (std::is_integral_v<T>) {
    const C ia = saturate_to_int64(a), ib = saturate_to_int64(b);
    switch (op) {
      case UnaryOp::neg: return run([](C x) { return -x; });
      case UnaryOp::abs: return run([](C x) { return x < 0 ? -x : x; });
      case UnaryOp::relu: return run([](C x) { return x < 0 ? C(0) : x; });
      case UnaryOp::sign: return run([](C x) { return C((0 < x) - (x < 0)); });
      case UnaryOp::clamp:
        return run([ia, ib](C x) {
          const C t = x < ia ? ia : x;
          return t > ib ? ib : t;
        });
      case UnaryOp::pow_scalar: return run([ia](C x) { return int_pow(x, ia); });
      case UnaryOp::affine: return run([ia, ib](C x) { return x * ia + ib; });
      default:
        KILN_FAIL("unary op ", static_cast<int>(op), " is not defined for ", out.meta_str(),
                  " (core promotes integers to f32 for it)");
    }
  } else {
    const C ca = static_cast<C>(a), cb = static_cast<C>(b);
    switch (op) {
      case UnaryOp::neg: return run([](C x) { return -x; });
      case UnaryOp::exp: return run([](C x) { return std::exp(x); });
      case UnaryOp::log: return run([](C x) { return std::log(x); });
      case UnaryOp::sqrt: return run([](C x) { return std::sqrt(x); });
      case UnaryOp::rsqrt: return run([](C x) { return C(1) / std::sqrt(x); });
      case UnaryOp::abs: return run([](C x) { return std::abs(x); });
      // x < 0 rather than x > 0: NaN passes through, as torch.relu's clamp_min does.
      case UnaryOp::relu: return run([](C x) { return x < C(0) ? C(0) : x; });
      case UnaryOp::gelu: return run([](C x) { return gelu_tanh(x); });
      case UnaryOp::tanh: return run([](C x) { return std::tanh(x); });
      case UnaryOp::sigmoid: return run([](C x) { return C(1) / (C(1) + std::exp(-x)); });
      case UnaryOp::sign: return run([](C x) { return C((C(0) < x) - (x < C(0))); });
      case UnaryOp::clamp:
        // max then min, so min > max gives max everywhere (torch.clamp) and NaN propagates.
        return run([ca, cb](C x) {
          const C t = x < ca ? ca : x;
          return t > cb ? cb : t;
        });
      case UnaryOp::pow_scalar:
        if (a == 2.0) return run([](C x) { return x * x; });
        return run([ca](C x) { return std::pow(x, ca); });
      case UnaryOp::affine: return run([ca, cb](C x) { return x * ca + cb; });
    }
    KILN_FAIL("unknown unary op ", static_cast<int>(op));
  }
}

void unary_kernel(UnaryOp op, Tensor& out, const Tensor& in, double a, double b) {
  KILN_DISPATCH_ALL(out.dtype(), "unary",
                    [&] { unary_typed<scalar_t>(op, out, in, a, b); });
}

// ---- binary

// Comparisons: T operands, bool output.
template <class T>
void compare_typed(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  using C = compute_t<T>;
  auto run = [&](auto cmp) {
    elementwise_loop<bool, T, T>(
        out, [cmp](T x, T y) { return static_cast<bool>(cmp(C(x), C(y))); }, a, b);
  };
  switch (op) {
    case BinaryOp::eq: return run([](C x, C y) { return x == y; });
    case BinaryOp::ne: return run([](C x, C y) { return x != y; });
    case BinaryOp::lt: return run([](C x, C y) { return x < y; });
    case BinaryOp::le: return run([](C x, C y) { return x <= y; });
    case BinaryOp::gt: return run([](C x, C y) { return x > y; });
    case BinaryOp::ge: return run([](C x, C y) { return x >= y; });
    default: KILN_FAIL("binary op ", static_cast<int>(op), " is not a comparison");
  }
}

template <class T>
void binary_typed(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  using C = compute_t<T>;
  if (is_comparison(op)) return compare_typed<T>(op, out, a, b);
  auto run = [&](auto fn) { elementwise_loop<T, T, T>(out, in_compute_type<T>(fn), a, b); };
  // `x != x` is the NaN test: maximum/minimum propagate NaN like torch.maximum.
  auto max_fn = [](C x, C y) { return (x > y || x != x) ? x : y; };
  auto min_fn = [](C x, C y) { return (x < y || x != x) ? x : y; };
  if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case BinaryOp::add: return run([](C x, C y) { return x + y; });
      case BinaryOp::sub: return run([](C x, C y) { return x - y; });
      case BinaryOp::mul: return run([](C x, C y) { return x * y; });
      case BinaryOp::pow: return run([](C x, C y) { return int_pow(x, y); });
      case BinaryOp::maximum: return run(max_fn);
      case BinaryOp::minimum: return run(min_fn);
      default:
        KILN_FAIL("binary op ", static_cast<int>(op), " is not defined for ", out.meta_str());
    }
  } else {
    const C kBeta = C(0.7978845608028654), kKappa = C(0.044715);
    switch (op) {
      case BinaryOp::add: return run([](C x, C y) { return x + y; });
      case BinaryOp::sub: return run([](C x, C y) { return x - y; });
      case BinaryOp::mul: return run([](C x, C y) { return x * y; });
      case BinaryOp::div: return run([](C x, C y) { return x / y; });
      case BinaryOp::pow: return run([](C x, C y) { return std::pow(x, y); });
      case BinaryOp::maximum: return run(max_fn);
      case BinaryOp::minimum: return run(min_fn);
      case BinaryOp::relu_backward: return run([](C g, C x) { return x > C(0) ? g : C(0); });
      case BinaryOp::gelu_backward:
        // d/dx of 0.5 x (1 + tanh(u)), u = beta (x + kappa x^3); PyTorch's formula.
        return run([=](C g, C x) {
          const C x_sq = x * x;
          const C t = cpu::tanh_fast(kBeta * (x + kKappa * x_sq * x));  // as gelu_tanh's
          const C left = C(0.5) * x;
          const C du = kBeta * (C(1) + C(3) * kKappa * x_sq);
          return g * (C(0.5) * (C(1) + t) + left * (C(1) - t * t) * du);
        });
      case BinaryOp::tanh_backward: return run([](C g, C y) { return g * (C(1) - y * y); });
      case BinaryOp::sigmoid_backward:
        return run([](C g, C y) { return g * y * (C(1) - y); });
      default: break;
    }
    KILN_FAIL("unknown binary op ", static_cast<int>(op));
  }
}

void binary_kernel(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  // Comparisons write bool, so the operands' dtype picks the typed body.
  KILN_DISPATCH_ALL(a.dtype(), "binary", [&] { binary_typed<scalar_t>(op, out, a, b); });
}

// ---- where

void where_kernel(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  KILN_DISPATCH_ALL(out.dtype(), "where", [&] {
    elementwise_loop<scalar_t, bool, scalar_t, scalar_t>(
        out, [](bool c, scalar_t x, scalar_t y) { return c ? x : y; }, cond, a, b);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(unary_stub, CPU, &unary_kernel);
KILN_REGISTER_KERNEL(binary_stub, CPU, &binary_kernel);
KILN_REGISTER_KERNEL(where_stub, CPU, &where_kernel);

}  // namespace kiln
