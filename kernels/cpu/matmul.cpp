// CPU batched GEMM on OpenBLAS. f32/f64 go straight to cblas_{s,d}gemm with transpose flags
// read from the strides; f16/bf16 are widened to f32, multiplied, and rounded back once, so
// the accumulation is f32 like on the GPU.
#include "core/dispatch/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <vector>

namespace kiln {
namespace {

// How cblas (row-major) reads one matrix slice of a 3-D operand: transposed when the view
// is column-major. The op layer (core/ops/matmul.cpp, blas_layout_ok) guarantees that one of
// the two holds; broadcast batch dims (stride 0) are fine, they only move the base pointer.
struct GemmOperand {
  CBLAS_TRANSPOSE trans;
  int ld;
};

GemmOperand gemm_operand(const Tensor& t) {
  const int64_t rows = t.size(1), cols = t.size(2), rs = t.stride(1), cs = t.stride(2);
  int64_t ld = -1;
  CBLAS_TRANSPOSE trans = CblasNoTrans;
  if ((cols == 1 || cs == 1) && (rows == 1 || rs >= std::max<int64_t>(1, cols))) {
    ld = rows == 1 ? std::max<int64_t>(1, cols) : rs;
  } else if ((rows == 1 || rs == 1) && (cols == 1 || cs >= std::max<int64_t>(1, rows))) {
    trans = CblasTrans;
    ld = cols == 1 ? std::max<int64_t>(1, rows) : cs;
  }
  KILN_CHECK(ld >= 0, "bmm: operand ", t.meta_str(), " with strides ", shape_str(t.strides()),
             " is neither row- nor column-major in its last two dims");
  KILN_CHECK(ld <= INT_MAX, "bmm: leading dimension ", ld, " of ", t.meta_str(),
             " is too large for BLAS");
  return {trans, static_cast<int>(ld)};
}

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const float* A, int lda,
          const float* B, int ldb, float* C) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
}

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const double* A, int lda,
          const double* B, int ldb, double* C) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, N);
}

// One GEMM per batch, one after another: OpenBLAS threads each GEMM itself, and calling it
// from an OpenMP team would oversubscribe the cores.
template <class T>
void bmm_blas(Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  const GemmOperand oa = gemm_operand(a), ob = gemm_operand(b);
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  T* pc = out.data<T>();
  for (int64_t i = 0; i < B; ++i)
    gemm(oa.trans, ob.trans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
         pa + i * a.stride(0), oa.ld, pb + i * b.stride(0), ob.ld, pc + i * M * N);
}

// Copies matrix `i` of a strided 3-D tensor of 16-bit floats into a row-major f32 buffer.
template <class T>
void widen_matrix(const Tensor& t, int64_t i, float* dst) {
  const int64_t rows = t.size(1), cols = t.size(2), rs = t.stride(1), cs = t.stride(2);
  const T* src = t.data<T>() + i * t.stride(0);
#pragma omp parallel for if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = static_cast<float>(src[r * rs + c * cs]);
}

template <class T>
void bmm_widened(Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  std::vector<float> wa(M * K), wb(K * N), wc(M * N);
  T* pc = out.data<T>();
  for (int64_t i = 0; i < B; ++i) {
    widen_matrix<T>(a, i, wa.data());
    widen_matrix<T>(b, i, wb.data());
    gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
         wa.data(), static_cast<int>(K), wb.data(), static_cast<int>(N), wc.data());
    T* dst = pc + i * M * N;
#pragma omp parallel for if (M * N > (1 << 16))
    for (int64_t j = 0; j < M * N; ++j) dst[j] = T(wc[j]);
  }
}

void bmm_cpu(Tensor& out, const Tensor& a, const Tensor& b) {
  const int64_t M = out.size(1), N = out.size(2), K = a.size(2);
  KILN_CHECK(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX, "bmm: ", a.meta_str(), " @ ",
             b.meta_str(), " is too large for BLAS (sizes must fit in int)");
  if (out.numel() == 0) return;
  if (K == 0) {
    out.zero_();
    return;
  }
  KILN_DISPATCH_FLOATING(out.dtype(), "bmm", [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>)
      bmm_blas<scalar_t>(out, a, b);
    else
      bmm_widened<scalar_t>(out, a, b);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(bmm_stub, CPU, &bmm_cpu);

}  // namespace kiln
