// CUDA batched GEMM on cuBLASLt: f32, f16 and bf16 with f32 accumulation (f64 in f64), one
// strided-batched call for the whole batch. When cuBLASLt's heuristic offers no algorithm
// (odd strides or alignments) the same GEMM goes to cublasGemmStridedBatchedEx.
//
// kiln is row-major and cuBLAS column-major. A row-major [M, N] C is a column-major [N, M]
// C^T, and C^T = B^T A^T, so cuBLAS gets (b, a) in that order with m = N, n = M.
#include <algorithm>
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/matmul.h"
#include "kernels/cuda/blas_handle.h"
#include "kernels/cuda/cublaslt_common.h"

namespace kiln {
namespace {

// One 3-D operand as cuBLAS sees it: the stored column-major matrix (rows x cols, leading
// dimension ld) and the op that turns it into the transpose of kiln's row-major view.
// The op layer (core/ops/matmul.cpp, blas_layout_ok) guarantees row- or column-major slices.
struct LtOperand {
  cublasOperation_t op;
  uint64_t rows, cols;
  int64_t ld, batch_stride;
  const void* ptr;
};

LtOperand lt_operand(const Tensor& t) {
  const int64_t rows = t.size(1), cols = t.size(2), rs = t.stride(1), cs = t.stride(2);
  const int64_t batch_stride = t.size(0) > 1 ? t.stride(0) : 0;
  if ((cols == 1 || cs == 1) && (rows == 1 || rs >= std::max<int64_t>(1, cols))) {
    // Row-major [rows, cols] is column-major [cols, rows]: already the transpose.
    const int64_t ld = rows == 1 ? std::max<int64_t>(1, cols) : rs;
    return {CUBLAS_OP_N, uint64_t(cols), uint64_t(rows), ld, batch_stride, t.data_ptr()};
  }
  if ((rows == 1 || rs == 1) && (cols == 1 || cs >= std::max<int64_t>(1, rows))) {
    // Column-major [rows, cols] is stored as itself: transpose it.
    const int64_t ld = cols == 1 ? std::max<int64_t>(1, rows) : cs;
    return {CUBLAS_OP_T, uint64_t(rows), uint64_t(cols), ld, batch_stride, t.data_ptr()};
  }
  KILN_FAIL("bmm: operand ", t.meta_str(), " with strides ", shape_str(t.strides()),
            " is neither row- nor column-major in its last two dims");
}

struct GemmTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;  // alpha and beta: f64 for f64, f32 otherwise
};

GemmTypes gemm_types(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return {CUDA_R_32F, cuda::allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
              CUDA_R_32F};
    case DType::f16:
      return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::bf16:
      return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::f64:
      return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F};
    default:
      KILN_FAIL("bmm: unsupported dtype ", dtype, " (expected a floating type)");
  }
}

// A batch of column-major matrices, batch_stride elements apart.
cuda::LtLayout make_layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld,
                           int32_t batch, int64_t batch_stride) {
  cuda::LtLayout layout = cuda::make_lt_layout(type, rows, cols, ld);
  cublasLtMatrixLayout_t raw = layout.get();
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                     &batch, sizeof(batch)));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
      raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride, sizeof(batch_stride)));
  return layout;
}

// cuBLASLt: returns false (having launched nothing) when it has no algorithm for the problem.
bool bmm_lt(const GemmTypes& types, const LtOperand& A, const LtOperand& B, void* C, int64_t m,
            int64_t n, int64_t k, int32_t batch, const void* alpha, const void* beta,
            cudaStream_t stream) {
  cuda::LtMatmulDesc desc = cuda::make_lt_matmul_desc(types.compute, types.scale);
  cuda::lt_set_desc(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, A.op);
  cuda::lt_set_desc(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, B.op);
  cuda::LtLayout la = make_layout(types.data, A.rows, A.cols, A.ld, batch, A.batch_stride);
  cuda::LtLayout lb = make_layout(types.data, B.rows, B.cols, B.ld, batch, B.batch_stride);
  cuda::LtLayout lc = make_layout(types.data, uint64_t(m), uint64_t(n), m, batch, m * n);
  cuda::LtPreference pref = cuda::make_lt_preference(A.ptr, B.ptr, C);

  cublasLtHandle_t handle = cuda::cublaslt_handle();
  cublasLtMatmulAlgo_t algo;
  if (!cuda::lt_heuristic(handle, desc.get(), la.get(), lb.get(), lc.get(), pref.get(), &algo))
    return false;
  KILN_CUBLAS_CHECK(cublasLtMatmul(handle, desc.get(), alpha, A.ptr, la.get(), B.ptr, lb.get(),
                                   beta, C, lc.get(), C, lc.get(), &algo, cuda::blas_workspace(),
                                   cuda::kBlasWorkspaceBytes, stream));
  return true;
}

void bmm_cuda(Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.numel() == 0) return;
  cuda::DeviceGuard guard(out.device().index);
  cudaStream_t stream = cuda::current_stream();
  const int64_t batch = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  if (K == 0) {
    KILN_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0, out.numel() * out.element_size(), stream));
    return;
  }
  KILN_CHECK(batch <= INT32_MAX, "bmm: batch ", batch, " too large for cuBLAS");
  const GemmTypes types = gemm_types(out.dtype());
  // C^T = B^T A^T: cuBLAS's first operand is kiln's b.
  const LtOperand A = lt_operand(b), B = lt_operand(a);
  const float alpha_f = 1.0f, beta_f = 0.0f;
  const double alpha_d = 1.0, beta_d = 0.0;
  const bool f64 = out.dtype() == DType::f64;
  const void* alpha = f64 ? static_cast<const void*>(&alpha_d) : &alpha_f;
  const void* beta = f64 ? static_cast<const void*>(&beta_d) : &beta_f;

  if (bmm_lt(types, A, B, out.data_ptr(), N, M, K, int32_t(batch), alpha, beta, stream)) return;
  KILN_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      cuda::cublas_handle(), A.op, B.op, N, M, K, alpha, A.ptr, types.data, A.ld, A.batch_stride,
      B.ptr, types.data, B.ld, B.batch_stride, beta, out.data_ptr(), types.data, N, M * N, batch,
      types.compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

KILN_REGISTER_KERNEL(bmm_stub, CUDA, &bmm_cuda);

}  // namespace kiln
