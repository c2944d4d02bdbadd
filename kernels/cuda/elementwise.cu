// CUDA elementwise kernels: unary, binary and where. One templated kernel per (operand
// types, op functor) in two shapes:
//   - dense: every operand contiguous in the same order; 16-byte vector loads and stores
//     (aligned_vector of 4 floats, 8 bf16, ...) when every pointer is 16-byte aligned, else
//     one element at a time;
//   - strided: offsets from the ElementwiseLayout (broadcast, transposed, sliced operands).
// Both are grid-stride loops on kiln's current stream. The op formulas mirror
// kernels/cpu/elementwise.cpp; tests/test_elementwise_cuda.cpp keeps the two in agreement.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/cuda_context.h"
#include "core/dispatch/elementwise.h"
#include "core/elementwise_layout.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

// As on the CPU: floats compute in opmath, integers (bool included) in int64.
template <class T>
using compute_t = std::conditional_t<std::is_integral_v<T>, int64_t, opmath_t<T>>;

template <class>
using TensorFor = Tensor;  // one Tensor parameter per input type

// ---------------------------------------------------------------------------------------
// Kernels

template <class T, int VEC>
struct alignas(sizeof(T) * VEC) aligned_vector {
  T val[VEC];
};

// Takes the vectors by value: one 16-byte load each (by reference, nvcc may split them).
template <int VEC, class Tout, class F, class... Tin>
__device__ __forceinline__ aligned_vector<Tout, VEC> apply_vector(
    const F& f, const aligned_vector<Tin, VEC>... x) {
  aligned_vector<Tout, VEC> y;
#pragma unroll
  for (int j = 0; j < VEC; ++j) y.val[j] = f(x.val[j]...);
  return y;
}

// Dense operands: VEC elements per step through aligned vectors, then the tail one by one.
// VEC == 1 serves dense operands whose pointers are not aligned for wider loads.
template <int VEC, class Tout, class F, class... Tin>
__global__ void __launch_bounds__(kThreads)
    dense_kernel(int64_t n, F f, Tout* __restrict__ out, const Tin* __restrict__... in) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  auto* out_vec = reinterpret_cast<aligned_vector<Tout, VEC>*>(out);
  for (int64_t v = first; v < nvec; v += stride)
    out_vec[v] = apply_vector<VEC, Tout>(
        f, reinterpret_cast<const aligned_vector<Tin, VEC>*>(in)[v]...);
  for (int64_t i = nvec * VEC + first; i < n; i += stride) out[i] = f(in[i]...);
}

// Every operand's element offset for linear index i, with one div/mod pass over the dims
// shared by all operands. Index is 32-bit when the element count allows: 64-bit integer
// division is several times slower on the GPU.
template <class Index, int N>
__device__ __forceinline__ void operand_offsets(const ElementwiseLayout<N>& L, Index i,
                                                int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) off[k] = 0;
  for (int d = 0; d < L.ndim; ++d) {
    const Index size = static_cast<Index>(L.sizes[d]);
    const Index idx = i % size;
    i /= size;
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] += static_cast<int64_t>(idx) * L.strides[k][d];
  }
}

// out[off[0]] = f(in_K[off[K + 1]]...): input K is operand K + 1 of the layout.
template <int N, class Tout, class F, std::size_t... K, class... Tin>
__device__ __forceinline__ void apply_at(const int64_t (&off)[N], const F& f,
                                         std::index_sequence<K...>, Tout* out,
                                         const Tin*... in) {
  out[off[0]] = f(in[off[K + 1]]...);
}

// Any strides (broadcast operands have stride 0).
template <class Tout, class F, class... Tin>
__global__ void __launch_bounds__(kThreads)
    strided_kernel(ElementwiseLayout<1 + sizeof...(Tin)> L, F f, Tout* __restrict__ out,
                   const Tin* __restrict__... in) {
  constexpr int N = 1 + sizeof...(Tin);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool narrow = L.numel <= INT32_MAX;  // the same for every thread: no divergence
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < L.numel;
       i += stride) {
    int64_t off[N];
    if (narrow)
      operand_offsets<uint32_t>(L, static_cast<uint32_t>(i), off);
    else
      operand_offsets<uint64_t>(L, static_cast<uint64_t>(i), off);
    apply_at(off, f, std::index_sequence_for<Tin...>{}, out, in...);
  }
}

template <class T, int VEC>
bool vector_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % alignof(aligned_vector<T, VEC>) == 0;
}

// out = f(in...) elementwise; picks the dense vectorised, dense or strided kernel.
template <class Tout, class... Tin, class F>
void launch_elementwise(Tensor& out, F f, const TensorFor<Tin>&... in) {
  constexpr int N = 1 + sizeof...(Tin);
  const ElementwiseLayout<N> L = make_elementwise_layout<N>({&out, &in...});
  if (L.numel == 0) return;
  cuda::DeviceGuard guard(out.device().index);
  cudaStream_t stream = cuda::current_stream();
  Tout* o = static_cast<Tout*>(out.data_ptr());
  if (L.contiguous) {
    // 16 bytes of the widest operand per load: 4 floats, 8 bf16, 2 doubles.
    constexpr std::size_t widest = std::max({sizeof(Tout), sizeof(Tin)...});
    constexpr int kVec = static_cast<int>(16 / widest);
    const bool aligned =
        vector_aligned<Tout, kVec>(o) && (vector_aligned<Tin, kVec>(in.data_ptr()) && ...);
    if (aligned) {
      dense_kernel<kVec, Tout><<<cuda::grid_for(L.numel / kVec, kThreads), kThreads, 0, stream>>>(
          L.numel, f, o, static_cast<const Tin*>(in.data_ptr())...);
    } else {
      dense_kernel<1, Tout><<<cuda::grid_for(L.numel, kThreads), kThreads, 0, stream>>>(
          L.numel, f, o, static_cast<const Tin*>(in.data_ptr())...);
    }
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  strided_kernel<Tout><<<cuda::grid_for(L.numel, kThreads), kThreads, 0, stream>>>(
      L, f, o, static_cast<const Tin*>(in.data_ptr())...);
  KILN_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------
// Functors. Ops compute in C = compute_t<T>; the adapters below load and store T.

// Loads T, applies Op in compute_t<T>, stores T.
template <class T, class Op>
struct InComputeType {
  Op op;
  template <class... X>
  __device__ T operator()(X... x) const {
    return static_cast<T>(op(static_cast<compute_t<T>>(x)...));
  }
};

// T operands, bool result.
template <class T, class Cmp>
struct Comparison {
  Cmp cmp;
  __device__ bool operator()(T x, T y) const {
    return cmp(static_cast<compute_t<T>>(x), static_cast<compute_t<T>>(y));
  }
};

struct Select {
  template <class T>
  __device__ T operator()(bool c, T x, T y) const { return c ? x : y; }
};

constexpr double kGeluBeta = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

// x^e for integers by repeated squaring; negative exponents truncate like 1 / x^-e.
__device__ int64_t int_pow(int64_t x, int64_t e) {
  if (e < 0) return x == 1 ? 1 : (x == -1 ? ((e & 1) ? -1 : 1) : 0);
  int64_t r = 1;
  while (e > 0) {
    if (e & 1) r *= x;
    x *= x;
    e >>= 1;
  }
  return r;
}

// ---- unary, in C
template <class C> struct Neg { __device__ C operator()(C x) const { return -x; } };
template <class C> struct Exp { __device__ C operator()(C x) const { return std::exp(x); } };
template <class C> struct Log { __device__ C operator()(C x) const { return std::log(x); } };
template <class C> struct Sqrt { __device__ C operator()(C x) const { return std::sqrt(x); } };
template <class C> struct Rsqrt { __device__ C operator()(C x) const { return rsqrt(x); } };
template <class C> struct Abs {
  __device__ C operator()(C x) const { return x < C(0) ? -x : x; }
};
// x < 0 rather than x > 0: NaN passes through, as torch.relu's clamp_min does.
template <class C> struct Relu {
  __device__ C operator()(C x) const { return x < C(0) ? C(0) : x; }
};
template <class C> struct Gelu {
  __device__ C operator()(C x) const {
    const C inner = C(kGeluBeta) * (x + C(kGeluKappa) * x * x * x);
    return C(0.5) * x * (C(1) + std::tanh(inner));
  }
};
template <class C> struct Tanh { __device__ C operator()(C x) const { return std::tanh(x); } };
template <class C> struct Sigmoid {
  __device__ C operator()(C x) const { return C(1) / (C(1) + std::exp(-x)); }
};
template <class C> struct Sign {
  __device__ C operator()(C x) const { return C((C(0) < x) - (x < C(0))); }
};
// max then min, so lo > hi gives hi everywhere (torch.clamp) and NaN propagates.
template <class C> struct Clamp {
  C lo, hi;
  __device__ C operator()(C x) const {
    const C t = x < lo ? lo : x;
    return t > hi ? hi : t;
  }
};
template <class C> struct Square { __device__ C operator()(C x) const { return x * x; } };
template <class C> struct PowScalar {
  C e;
  __device__ C operator()(C x) const { return std::pow(x, e); }
};
template <class C> struct IntPowScalar {
  C e;
  __device__ C operator()(C x) const { return int_pow(x, e); }
};
template <class C> struct Affine {
  C scale, shift;
  __device__ C operator()(C x) const { return x * scale + shift; }
};

// ---- binary, in C
template <class C> struct Add { __device__ C operator()(C x, C y) const { return x + y; } };
template <class C> struct Sub { __device__ C operator()(C x, C y) const { return x - y; } };
template <class C> struct Mul { __device__ C operator()(C x, C y) const { return x * y; } };
template <class C> struct Div { __device__ C operator()(C x, C y) const { return x / y; } };
template <class C> struct Pow {
  __device__ C operator()(C x, C y) const { return std::pow(x, y); }
};
template <class C> struct IntPow {
  __device__ C operator()(C x, C y) const { return int_pow(x, y); }
};
// `x != x` is the NaN test: maximum/minimum propagate NaN like torch.maximum.
template <class C> struct Maximum {
  __device__ C operator()(C x, C y) const { return (x > y || x != x) ? x : y; }
};
template <class C> struct Minimum {
  __device__ C operator()(C x, C y) const { return (x < y || x != x) ? x : y; }
};
template <class C> struct ReluBackward {
  __device__ C operator()(C g, C x) const { return x > C(0) ? g : C(0); }
};
// d/dx of 0.5 x (1 + tanh(u)), u = beta (x + kappa x^3); PyTorch's formula.
template <class C> struct GeluBackward {
  __device__ C operator()(C g, C x) const {
    const C x_sq = x * x;
    const C t = std::tanh(C(kGeluBeta) * (x + C(kGeluKappa) * x_sq * x));
    const C du = C(kGeluBeta) * (C(1) + C(3) * C(kGeluKappa) * x_sq);
    return g * (C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * du);
  }
};
template <class C> struct TanhBackward {
  __device__ C operator()(C g, C y) const { return g * (C(1) - y * y); }
};
template <class C> struct SigmoidBackward {
  __device__ C operator()(C g, C y) const { return g * y * (C(1) - y); }
};

// ---- comparisons, in C
template <class C> struct Eq { __device__ bool operator()(C x, C y) const { return x == y; } };
template <class C> struct Ne { __device__ bool operator()(C x, C y) const { return x != y; } };
template <class C> struct Lt { __device__ bool operator()(C x, C y) const { return x < y; } };
template <class C> struct Le { __device__ bool operator()(C x, C y) const { return x <= y; } };
template <class C> struct Gt { __device__ bool operator()(C x, C y) const { return x > y; } };
template <class C> struct Ge { __device__ bool operator()(C x, C y) const { return x >= y; } };

// ---------------------------------------------------------------------------------------
// Dispatch: dtype, then op

// Integer bounds and exponents arrive as doubles; +-inf (a missing clamp bound) saturates.
int64_t saturate_to_int64(double v) {
  if (v <= -9.2233720368547758e18) return INT64_MIN;
  if (v >= 9.2233720368547758e18) return INT64_MAX;
  return static_cast<int64_t>(v);
}

template <class T>
void unary_typed(UnaryOp op, Tensor& out, const Tensor& in, double a, double b) {
  using C = compute_t<T>;
  auto run = [&](auto fn) { launch_elementwise<T, T>(out, InComputeType<T, decltype(fn)>{fn}, in); };
  if constexpr (std::is_integral_v<T>) {
    const C ia = saturate_to_int64(a), ib = saturate_to_int64(b);
    switch (op) {
      case UnaryOp::neg: return run(Neg<C>{});
      case UnaryOp::abs: return run(Abs<C>{});
      case UnaryOp::relu: return run(Relu<C>{});
      case UnaryOp::sign: return run(Sign<C>{});
      case UnaryOp::clamp: return run(Clamp<C>{ia, ib});
      case UnaryOp::pow_scalar: return run(IntPowScalar<C>{ia});
      case UnaryOp::affine: return run(Affine<C>{ia, ib});
      default:
        KILN_FAIL("unary op ", static_cast<int>(op), " is not defined for ", out.meta_str(),
                  " (core promotes integers to f32 for it)");
    }
  } else {
    const C ca = static_cast<C>(a), cb = static_cast<C>(b);
    switch (op) {
      case UnaryOp::neg: return run(Neg<C>{});
      case UnaryOp::exp: return run(Exp<C>{});
      case UnaryOp::log: return run(Log<C>{});
      case UnaryOp::sqrt: return run(Sqrt<C>{});
      case UnaryOp::rsqrt: return run(Rsqrt<C>{});
      case UnaryOp::abs: return run(Abs<C>{});
      case UnaryOp::relu: return run(Relu<C>{});
      case UnaryOp::gelu: return run(Gelu<C>{});
      case UnaryOp::tanh: return run(Tanh<C>{});
      case UnaryOp::sigmoid: return run(Sigmoid<C>{});
      case UnaryOp::sign: return run(Sign<C>{});
      case UnaryOp::clamp: return run(Clamp<C>{ca, cb});
      case UnaryOp::pow_scalar:
        if (a == 2.0) return run(Square<C>{});
        return run(PowScalar<C>{ca});
      case UnaryOp::affine: return run(Affine<C>{ca, cb});
    }
    KILN_FAIL("unknown unary op ", static_cast<int>(op));
  }
}

void unary_kernel(UnaryOp op, Tensor& out, const Tensor& in, double a, double b) {
  KILN_DISPATCH_ALL(out.dtype(), "unary", [&] { unary_typed<scalar_t>(op, out, in, a, b); });
}

template <class T>
void compare_typed(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  using C = compute_t<T>;
  auto run = [&](auto cmp) {
    launch_elementwise<bool, T, T>(out, Comparison<T, decltype(cmp)>{cmp}, a, b);
  };
  switch (op) {
    case BinaryOp::eq: return run(Eq<C>{});
    case BinaryOp::ne: return run(Ne<C>{});
    case BinaryOp::lt: return run(Lt<C>{});
    case BinaryOp::le: return run(Le<C>{});
    case BinaryOp::gt: return run(Gt<C>{});
    case BinaryOp::ge: return run(Ge<C>{});
    default: KILN_FAIL("binary op ", static_cast<int>(op), " is not a comparison");
  }
}

template <class T>
void binary_typed(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  using C = compute_t<T>;
  if (is_comparison(op)) return compare_typed<T>(op, out, a, b);
  auto run = [&](auto fn) {
    launch_elementwise<T, T, T>(out, InComputeType<T, decltype(fn)>{fn}, a, b);
  };
  if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case BinaryOp::add: return run(Add<C>{});
      case BinaryOp::sub: return run(Sub<C>{});
      case BinaryOp::mul: return run(Mul<C>{});
      case BinaryOp::pow: return run(IntPow<C>{});
      case BinaryOp::maximum: return run(Maximum<C>{});
      case BinaryOp::minimum: return run(Minimum<C>{});
      default:
        KILN_FAIL("binary op ", static_cast<int>(op), " is not defined for ", out.meta_str());
    }
  } else {
    switch (op) {
      case BinaryOp::add: return run(Add<C>{});
      case BinaryOp::sub: return run(Sub<C>{});
      case BinaryOp::mul: return run(Mul<C>{});
      case BinaryOp::div: return run(Div<C>{});
      case BinaryOp::pow: return run(Pow<C>{});
      case BinaryOp::maximum: return run(Maximum<C>{});
      case BinaryOp::minimum: return run(Minimum<C>{});
      case BinaryOp::relu_backward: return run(ReluBackward<C>{});
      case BinaryOp::gelu_backward: return run(GeluBackward<C>{});
      case BinaryOp::tanh_backward: return run(TanhBackward<C>{});
      case BinaryOp::sigmoid_backward: return run(SigmoidBackward<C>{});
      default: break;
    }
    KILN_FAIL("unknown binary op ", static_cast<int>(op));
  }
}

void binary_kernel(BinaryOp op, Tensor& out, const Tensor& a, const Tensor& b) {
  // Comparisons write bool, so the operands' dtype picks the typed body.
  KILN_DISPATCH_ALL(a.dtype(), "binary", [&] { binary_typed<scalar_t>(op, out, a, b); });
}

void where_kernel(Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  KILN_DISPATCH_ALL(out.dtype(), "where", [&] {
    launch_elementwise<scalar_t, bool, scalar_t, scalar_t>(out, Select{}, cond, a, b);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(unary_stub, CUDA, &unary_kernel);
KILN_REGISTER_KERNEL(binary_stub, CUDA, &binary_kernel);
KILN_REGISTER_KERNEL(where_stub, CUDA, &where_kernel);

}  // namespace kiln
