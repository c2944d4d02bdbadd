// CUDA linear on cuBLASLt, with the bias and the GELU in the GEMM's epilogue (llm.c's
// matmul_cublaslt is the model):
//   forward          out = x @ w^T      epilogue BIAS, GELU_AUX or GELU_AUX_BIAS (aux: the
//                                       GELU's input, saved for backward)
//   weight gradient  dw = dz^T @ x      epilogue BGRADB: db = the sum of dz's rows, from the
//                                       GEMM's own pass over dz
// f32 (TF32 when allowed), bf16 and f16, accumulating in f32. f64, and anything cuBLASLt has no
// algorithm for (a GELU output whose width is not a multiple of 8, unaligned views), returns
// false and the op composes the result from matmul, add, gelu and sum instead.
//
// kiln is row-major and cuBLAS column-major: a row-major [r, c] matrix is a column-major
// [c, r] one. So out [N, out] is D = [out, N] = op(w) [out, in] x x^T [in, N], with w's stored
// [in, out] transposed; m = out, n = N, k = in, and the bias runs along D's rows, as cuBLASLt's
// BIAS epilogue wants.
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/linear.h"
#include "kernels/cuda/blas_handle.h"
#include "kernels/cuda/cublaslt_common.h"

namespace kiln {
namespace {

using cuda::lt_set_desc;

// One operand as cuBLAS sees it: the stored column-major matrix (rows x cols, leading
// dimension ld) and the op applied to it.
struct LtOperand {
  cublasOperation_t op;
  uint64_t rows, cols;
  int64_t ld;
  const void* ptr;
};

struct LtEpilogue {
  cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // BIAS: read; BGRADB: written
  void* aux = nullptr;         // GELU_AUX*: the GELU's input, written
  int64_t aux_ld = 0;
};

// D [m, n] (column-major, leading dimension ldd) = op(A) op(B) with the epilogue. Returns
// false, having launched nothing, when the dtype has no epilogue support here or cuBLASLt
// offers no algorithm.
bool lt_matmul(DType dtype, const LtOperand& A, const LtOperand& B, void* D, uint64_t m, uint64_t n,
               int64_t ldd, const LtEpilogue& epilogue) {
  cudaDataType_t type;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (dtype) {
    case DType::f32:
      type = CUDA_R_32F;
      if (cuda::allow_tf32()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
      break;
    case DType::bf16: type = CUDA_R_16BF; break;
    case DType::f16: type = CUDA_R_16F; break;
    default: return false;  // f64: the op's composed path
  }

  cuda::LtMatmulDesc desc = cuda::make_lt_matmul_desc(compute, CUDA_R_32F);
  cublasLtMatmulDesc_t desc_raw = desc.get();
  lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_TRANSA, A.op);
  lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_TRANSB, B.op);
  lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue.kind);
  if (epilogue.bias) lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_BIAS_POINTER, epilogue.bias);
  if (epilogue.aux) {
    lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, epilogue.aux);
    lt_set_desc(desc_raw, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, epilogue.aux_ld);
  }

  cuda::LtLayout la = cuda::make_lt_layout(type, A.rows, A.cols, A.ld);
  cuda::LtLayout lb = cuda::make_lt_layout(type, B.rows, B.cols, B.ld);
  cuda::LtLayout ld = cuda::make_lt_layout(type, m, n, ldd);
  cuda::LtPreference pref = cuda::make_lt_preference(A.ptr, B.ptr, D);

  cublasLtHandle_t handle = cuda::cublaslt_handle();
  cublasLtMatmulAlgo_t algo;
  if (!cuda::lt_heuristic(handle, desc_raw, la.get(), lb.get(), ld.get(), pref.get(), &algo))
    return false;
  const float alpha = 1.0f, beta = 0.0f;
  KILN_CUBLAS_CHECK(cublasLtMatmul(handle, desc_raw, &alpha, A.ptr, la.get(), B.ptr, lb.get(), &beta, D,
                                   ld.get(), D, ld.get(), &algo, cuda::blas_workspace(),
                                   cuda::kBlasWorkspaceBytes, cuda::current_stream()));
  return true;
}

// The leading dimension of a row-major matrix whose rows are unit-stride (the op guarantees it;
// a single row's stride is meaningless, so it gets the row length).
int64_t leading_dim(const Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

bool linear_cuda(Tensor& out, Tensor& pre, const Tensor& x, const Tensor& w, const Tensor& b, Activation act) {
  cuda::DeviceGuard guard(out.device().index);
  const int64_t n = x.size(0), in = x.size(1), out_features = w.size(0);
  const bool gelu = act == Activation::gelu;
  // The GELU input's leading dimension must be a multiple of 8 (cuBLASLt's rule for aux).
  if (gelu && out_features % 8 != 0) return false;
  LtEpilogue epilogue;
  if (b.defined()) {
    epilogue.kind = gelu ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_BIAS;
    epilogue.bias = b.data_ptr();
  } else if (gelu) {
    epilogue.kind = CUBLASLT_EPILOGUE_GELU_AUX;
  }
  if (gelu) {
    epilogue.aux = pre.data_ptr();
    epilogue.aux_ld = out_features;
  }
  const LtOperand A{CUBLAS_OP_T, uint64_t(in), uint64_t(out_features), leading_dim(w), w.data_ptr()};
  const LtOperand B{CUBLAS_OP_N, uint64_t(in), uint64_t(n), leading_dim(x), x.data_ptr()};
  return lt_matmul(out.dtype(), A, B, out.data_ptr(), out_features, n, out_features, epilogue);
}

// dw [out, in] row-major is D = [in, out] = x^T [in, N] x dz [N, out]: m = in, n = out, k = N.
// BGRADB sums op(B) = dz over k, the rows: the bias gradient.
bool linear_weight_grad_cuda(Tensor& grad_w, Tensor& grad_b, const Tensor& dz, const Tensor& x) {
  cuda::DeviceGuard guard(dz.device().index);
  const int64_t n = dz.size(0), out_features = dz.size(1), in = x.size(1);
  LtEpilogue epilogue;
  if (grad_b.defined()) {
    epilogue.kind = CUBLASLT_EPILOGUE_BGRADB;
    epilogue.bias = grad_b.data_ptr();
  }
  const LtOperand A{CUBLAS_OP_N, uint64_t(in), uint64_t(n), leading_dim(x), x.data_ptr()};
  const LtOperand B{CUBLAS_OP_T, uint64_t(out_features), uint64_t(n), out_features, dz.data_ptr()};
  return lt_matmul(dz.dtype(), A, B, grad_w.data_ptr(), in, out_features, in, epilogue);
}

}  // namespace

KILN_REGISTER_KERNEL(linear_stub, CUDA, &linear_cuda);
KILN_REGISTER_KERNEL(linear_weight_grad_stub, CUDA, &linear_weight_grad_cuda);

}  // namespace kiln
