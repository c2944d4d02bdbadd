// CPU linear: the GEMM on OpenBLAS through bmm_stub, then one pass over the output adding the
// bias and applying the GELU. 16-bit inputs are multiplied in f32 and the epilogue reads the
// f32 product, so the output is rounded once, as cuBLASLt's epilogue does.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/dispatch/linear.h"
#include "core/dispatch/matmul.h"
#include "kernels/gelu_common.h"

namespace kiln {
namespace {

// out = act(acc + bias) row by row; `acc` may alias `out` (f32 and f64 multiply in place).
// One straight loop per case: a load under `bias ? ...` or a store under `if (gelu)` inside
// the loop is control flow that GCC does not vectorise, and the GELU's tanh then ran scalar.
template <class T, class C>
void bias_activation(const C* acc, T* out, T* pre, const T* bias, int64_t rows, int64_t cols, bool gelu) {
#pragma omp parallel for if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const C* a = acc + r * cols;
    T* o = out + r * cols;
    T* p = pre ? pre + r * cols : nullptr;
    if (gelu && bias) {
      for (int64_t c = 0; c < cols; ++c) {
        const C z = a[c] + static_cast<C>(bias[c]);
        p[c] = T(z);
        o[c] = T(gelu_tanh(z));
      }
    } else if (gelu) {
      for (int64_t c = 0; c < cols; ++c) {
        p[c] = T(a[c]);
        o[c] = T(gelu_tanh(a[c]));
      }
    } else if (bias) {
      for (int64_t c = 0; c < cols; ++c) o[c] = T(a[c] + static_cast<C>(bias[c]));
    } else {
      for (int64_t c = 0; c < cols; ++c) o[c] = T(a[c]);
    }
  }
}

template <class T>
void linear_typed(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b, bool gelu) {
  using C = opmath_t<T>;
  const int64_t rows = x.size(0), cols = w.size(0);
  const T* bias = b.defined() ? b.data<T>() : nullptr;
  T* p = gelu ? pre.data<T>() : nullptr;
  if constexpr (std::is_same_v<C, T>) {
    Tensor out3 = out.view({1, rows, cols});
    bmm_stub(kCPU, out3, x.unsqueeze(0), w.t().unsqueeze(0));  // w^T: a BLAS transpose flag
    // Without bias and GELU the product is the output: no pass over it (GPT's lm_head writes
    // B*T*vocab logits, and rewriting them in place cost ~3% of a CPU training step).
    if (bias || gelu) bias_activation<T, C>(out.data<T>(), out.data<T>(), p, bias, rows, cols, gelu);
  } else {
    Tensor acc = empty({1, rows, cols}, {.dtype = DType::f32});
    bmm_stub(kCPU, acc, x.to(DType::f32).unsqueeze(0), w.to(DType::f32).t().unsqueeze(0));
    bias_activation<T, C>(acc.data<float>(), out.data<T>(), p, bias, rows, cols, gelu);
  }
}

bool linear_cpu(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  KILN_DISPATCH_FLOATING(out.dtype(), "linear", [&] {
    linear_typed<scalar_t>(out, pre, x, w, b, act == Activation::gelu);
  });
  return true;
}

// grad_b[c] = sum over rows of dz[r, c], in f64, rows in order: the same bits every run.
template <class T>
void column_sums(const T* dz, T* grad_b, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = 256;
#pragma omp parallel for if (rows * cols > (1 << 16))
  for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
    const int64_t c1 = std::min(cols, c0 + kBlock);
    double acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = dz + r * cols;
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(row[c]);
    }
    for (int64_t c = c0; c < c1; ++c) grad_b[c] = T(acc[c - c0]);
  }
}

bool linear_weight_grad_cpu(Tensor& grad_w, Tensor& grad_b, const Tensor& dz, const Tensor& x) {
  const int64_t rows = dz.size(0), cols = dz.size(1), in = x.size(1);
  // dz^T is a column-major view of the contiguous dz: BLAS reads it with a transpose flag, and
  // the product lands in grad_w's own [out, in] layout.
  Tensor grad_w3 = grad_w.view({1, cols, in});
  bmm_stub(kCPU, grad_w3, dz.t().unsqueeze(0), x.unsqueeze(0));
  if (grad_b.defined()) {
    KILN_DISPATCH_FLOATING(dz.dtype(), "linear backward", [&] {
      column_sums(dz.data<scalar_t>(), grad_b.data<scalar_t>(), rows, cols);
    });
  }
  return true;
}

}  // namespace

KILN_REGISTER_KERNEL(linear_stub, CPU, &linear_cpu);
KILN_REGISTER_KERNEL(linear_weight_grad_stub, CPU, &linear_weight_grad_cpu);

}  // namespace kiln
