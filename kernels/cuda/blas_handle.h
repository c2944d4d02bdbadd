// The cuBLAS and cuBLASLt handles kiln's GEMMs use: one of each per device, made on first use,
// sharing one 32 MiB workspace and bound to kiln::cuda::current_stream(). Include from .cu
// files only.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>

namespace kiln::cuda {

inline constexpr std::size_t kBlasWorkspaceBytes = 32u << 20;

// The cuBLAS handle of the current device, with its stream set to current_stream() and its
// workspace set to blas_workspace() (cublasSetStream resets the workspace, so both every call).
cublasHandle_t cublas_handle();
// The cuBLASLt handle of the current device. cuBLASLt takes the stream and the workspace per
// call: pass current_stream() and blas_workspace().
cublasLtHandle_t cublaslt_handle();
// kBlasWorkspaceBytes of device memory on the current device. Both handles use it; that is
// safe because every GEMM runs on the one current_stream() of its device, in order. A second
// stream running GEMMs concurrently would need a workspace of its own.
void* blas_workspace();

// TF32 tensor cores for f32 GEMMs (~10 mantissa bits in the products). Off by default so f32
// matmuls match the CPU to ~1e-6 relative; turn on for speed, like PyTorch's
// torch.backends.cuda.matmul.allow_tf32.
void set_allow_tf32(bool on);
bool allow_tf32();

}  // namespace kiln::cuda
