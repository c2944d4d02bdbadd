// What both reduction kernels (kernels/cpu/reduce.cpp, kernels/cuda/reduce.cu) share: the
// accumulators they run and which one each ReduceOp takes, so a CPU and a CUDA reduction
// treat NaN, ties and integer sums the same way, and the check of their arguments.
//
// An op has an identity, a load(x, r, j) of element x at reduced position r for output j, and
// an associative combine(a, b); a finisher stores output j from its accumulator.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/dispatch/reduce.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/half.h"
#include "core/host_device.h"
#include "core/tensor.h"

namespace kiln {

// The accumulator type: f32 for the 16-bit floats and f32, f64 for f64, i64 for integers.
template <class T>
using acc_t = std::conditional_t<std::is_floating_point_v<opmath_t<T>>, opmath_t<T>, int64_t>;

template <class V>
KILN_HOST_DEVICE inline bool is_nan(V v) {
  return v != v;  // never true for integers
}

// Identities of max and min: infinities for floats (so a row of -inf still has a max).
template <class V>
KILN_HOST_DEVICE inline V lowest_value() {
  if constexpr (std::is_floating_point_v<V>) return -std::numeric_limits<V>::infinity();
  else return std::numeric_limits<V>::lowest();
}
template <class V>
KILN_HOST_DEVICE inline V highest_value() {
  if constexpr (std::is_floating_point_v<V>) return std::numeric_limits<V>::infinity();
  else return std::numeric_limits<V>::max();
}

template <class T>
struct SumOp {
  using Acc = acc_t<T>;
  KILN_HOST_DEVICE Acc identity() const { return Acc(0); }
  KILN_HOST_DEVICE Acc load(T x, int64_t /*r*/, int64_t /*j*/) const { return static_cast<Acc>(x); }
  KILN_HOST_DEVICE Acc combine(Acc a, Acc b) const { return a + b; }
};

// Squared deviation from a per-output mean: the second pass of a two-pass variance.
template <class T>
struct SquaredDeviationOp {
  using Acc = acc_t<T>;
  const Acc* mean;
  KILN_HOST_DEVICE Acc identity() const { return Acc(0); }
  KILN_HOST_DEVICE Acc load(T x, int64_t /*r*/, int64_t j) const {
    const Acc d = static_cast<Acc>(x) - mean[j];
    return d * d;
  }
  KILN_HOST_DEVICE Acc combine(Acc a, Acc b) const { return a + b; }
};

// max or min; NaN wins, as in PyTorch.
template <class T>
struct ExtremeOp {
  using Acc = acc_t<T>;
  bool take_max;
  KILN_HOST_DEVICE Acc identity() const { return take_max ? lowest_value<Acc>() : highest_value<Acc>(); }
  KILN_HOST_DEVICE Acc load(T x, int64_t /*r*/, int64_t /*j*/) const { return static_cast<Acc>(x); }
  KILN_HOST_DEVICE Acc combine(Acc a, Acc b) const {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return (take_max ? b > a : b < a) ? b : a;
  }
};

template <class V>
struct ValueIndex {
  V value;
  int64_t index;
};

// argmax or argmin: the first index of the extreme value (NaN counts as the extreme). The
// tie rule compares indices, so the order partial results meet in does not matter.
template <class T>
struct ArgExtremeOp {
  using V = acc_t<T>;
  using Acc = ValueIndex<V>;
  bool take_max;
  KILN_HOST_DEVICE Acc identity() const {
    return {take_max ? lowest_value<V>() : highest_value<V>(), std::numeric_limits<int64_t>::max()};
  }
  KILN_HOST_DEVICE Acc load(T x, int64_t r, int64_t /*j*/) const { return {static_cast<V>(x), r}; }
  KILN_HOST_DEVICE Acc combine(Acc a, Acc b) const {
    bool take_b;
    if (is_nan(a.value)) take_b = is_nan(b.value) && b.index < a.index;
    else if (is_nan(b.value)) take_b = true;
    else if (b.value == a.value) take_b = b.index < a.index;
    else take_b = take_max ? b.value > a.value : b.value < a.value;
    return take_b ? b : a;
  }
};

// ---- finishers
// Stores acc / divisor: 1 for sum, max and min, n for mean, n - correction for var.
template <class Out, class Acc>
struct StoreDivided {
  Out* out;
  Acc divisor;
  KILN_HOST_DEVICE void operator()(int64_t j, Acc a) const { out[j] = static_cast<Out>(a / divisor); }
};

struct StoreIndex {
  int64_t* out;
  template <class Acc>
  KILN_HOST_DEVICE void operator()(int64_t j, const Acc& a) const { out[j] = a.index; }
};

// ---- from a ReduceOp to accumulators
// Runs `op` on T elements: run(accumulator, finisher) reduces the [outer, reduced, inner] input
// once, on the kernel's device. var runs twice, the means in a scratch tensor on in's device.
template <class T, class Run>
void reduce_with(ReduceOp op, Tensor& out, const Tensor& in, int64_t outer, int64_t reduced, int64_t inner,
                 int64_t correction, const Run& run) {
  using Acc = acc_t<T>;
  constexpr bool kFloating = std::is_floating_point_v<Acc>;
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::mean:
      // Only floats and i64 are instantiated: core sums other integers as i64.
      if constexpr (kFloating || std::is_same_v<T, int64_t>) {
        KILN_CHECK(kFloating || op == ReduceOp::sum, "reduce kernel: mean of ", in.meta_str(),
                   " (needs a floating type)");
        KILN_CHECK(out.dtype() == in.dtype(), "reduce kernel: sum into ", out.meta_str());
        run(SumOp<T>{}, StoreDivided<T, Acc>{out.data<T>(), op == ReduceOp::mean ? Acc(reduced) : Acc(1)});
        return;
      }
      KILN_FAIL("reduce kernel: ", op == ReduceOp::sum ? "sum" : "mean", " of ", in.meta_str(),
                " (integer sums must arrive as i64; mean needs a floating type)");
    case ReduceOp::var:
      if constexpr (kFloating) {
        Tensor means = Tensor::empty({outer * inner},
                                     {std::is_same_v<Acc, double> ? DType::f64 : DType::f32, in.device()});
        Acc* m = static_cast<Acc*>(means.data_ptr());
        run(SumOp<T>{}, StoreDivided<Acc, Acc>{m, Acc(reduced)});
        const Acc denom = Acc(std::max<int64_t>(reduced - correction, 0));
        run(SquaredDeviationOp<T>{m}, StoreDivided<T, Acc>{out.data<T>(), denom});
        return;
      }
      KILN_FAIL("reduce kernel: var of ", in.meta_str(), " (needs a floating type)");
    case ReduceOp::max:
    case ReduceOp::min:
      run(ExtremeOp<T>{op == ReduceOp::max}, StoreDivided<T, Acc>{out.data<T>(), Acc(1)});
      return;
    case ReduceOp::argmax:
    case ReduceOp::argmin:
      run(ArgExtremeOp<T>{op == ReduceOp::argmax}, StoreIndex{out.data<int64_t>()});
      return;
  }
  KILN_FAIL("reduce kernel: unknown op");
}

// ---- arguments
inline void check_reduce_args(const Tensor& out, const Tensor& in, int64_t outer, int64_t reduced,
                              int64_t inner) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous(), "reduce kernel: needs contiguous tensors, got ",
             in.meta_str(), " -> ", out.meta_str());
  KILN_CHECK(out.numel() == outer * inner && in.numel() == outer * reduced * inner,
             "reduce kernel: ", in.meta_str(), " is not [", outer, ", ", reduced, ", ", inner,
             "] -> ", out.meta_str());
}

}  // namespace kiln
