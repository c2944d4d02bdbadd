// The cuBLASLt plumbing kiln's GEMMs share (kernels/cuda/matmul.cu, kernels/cuda/linear.cu):
// owning handles for the descriptors, a matrix layout, the preference every call uses
// (workspace, f32 split-K, the operands' real alignment) and the one-algorithm heuristic query.
// Each file still builds its own matmul descriptor and calls cublasLtMatmul itself. Include from
// .cu files only.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <memory>

#include "core/cuda_check.h"
#include "kernels/cuda/blas_handle.h"

namespace kiln::cuda {

struct LtMatmulDescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* p) const { cublasLtMatmulDescDestroy(p); }
};
struct LtLayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* p) const { cublasLtMatrixLayoutDestroy(p); }
};
struct LtPreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using LtMatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, LtMatmulDescDeleter>;
using LtLayout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LtLayoutDeleter>;
using LtPreference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, LtPreferenceDeleter>;

template <class T>
void lt_set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}
template <class T>
void lt_set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                 const T& value) {
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// The largest power of two (up to 256) dividing the address: cuBLASLt assumes 256-byte
// aligned buffers unless told otherwise, and views with an offset are not.
inline uint32_t lt_alignment_of(const void* p) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && addr % a != 0) a /= 2;
  return a;
}

inline LtMatmulDesc make_lt_matmul_desc(cublasComputeType_t compute, cudaDataType_t scale) {
  cublasLtMatmulDesc_t raw = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw, compute, scale));
  return LtMatmulDesc(raw);
}

// A column-major rows x cols matrix with leading dimension ld.
inline LtLayout make_lt_layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t raw = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&raw, type, rows, cols, ld));
  return LtLayout(raw);
}

// The search preference for D = op(A) op(B) with C = D: the shared kBlasWorkspaceBytes
// workspace, and the real alignment of each buffer.
inline LtPreference make_lt_preference(const void* a, const void* b, const void* d) {
  cublasLtMatmulPreference_t raw = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw));
  LtPreference pref(raw);
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kBlasWorkspaceBytes));
  // Split-K partial sums stay in the compute type (f32), never in a 16-bit output type.
  const uint32_t reduction =
      CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_NONE;
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, reduction);
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, lt_alignment_of(a));
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, lt_alignment_of(b));
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, lt_alignment_of(d));
  lt_set_pref(raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, lt_alignment_of(d));
  return pref;
}

// cuBLASLt's best algorithm for the problem (C and D share layout c), into *algo. Returns false
// when the query fails or finds none: the caller then falls back, having launched nothing.
inline bool lt_heuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                         cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                         cublasLtMatrixLayout_t c, cublasLtMatmulPreference_t pref,
                         cublasLtMatmulAlgo_t* algo) {
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, c, c, pref, 1, &heuristic, &found);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) return false;
  *algo = heuristic.algo;
  return true;
}

}  // namespace kiln::cuda
