// Per-device cuBLAS / cuBLASLt handles and their shared workspace. Created lazily and never
// destroyed: a handle torn down by one static destructor while another still runs a GEMM is
// worse than a handle the driver reclaims at exit.
#include <atomic>
#include <mutex>

#include "core/cuda_context.h"
#include "kernels/cuda/blas_handle.h"

namespace kiln::cuda {

namespace {

constexpr int kMaxDevices = 64;

struct DeviceBlas {
  std::once_flag once;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
};

std::atomic<bool> tf32_allowed{false};

DeviceBlas& device_blas() {
  const int device = current_device();
  KILN_CHECK(device < kMaxDevices, "CUDA device index ", device, " too large");
  static DeviceBlas blas[kMaxDevices];
  DeviceBlas& b = blas[device];
  std::call_once(b.once, [&b] {
    // The current device is already `device`: cuBLAS binds a handle to it.
    KILN_CUBLAS_CHECK(cublasCreate(&b.cublas));
    KILN_CUBLAS_CHECK(cublasLtCreate(&b.lt));
    KILN_CUDA_CHECK(cudaMalloc(&b.workspace, kBlasWorkspaceBytes));
  });
  return b;
}

}  // namespace

cublasHandle_t cublas_handle() {
  DeviceBlas& b = device_blas();
  KILN_CUBLAS_CHECK(cublasSetStream(b.cublas, current_stream()));
  KILN_CUBLAS_CHECK(cublasSetWorkspace(b.cublas, b.workspace, kBlasWorkspaceBytes));
  KILN_CUBLAS_CHECK(
      cublasSetMathMode(b.cublas, allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return b.cublas;
}

cublasLtHandle_t cublaslt_handle() { return device_blas().lt; }

void* blas_workspace() { return device_blas().workspace; }

void set_allow_tf32(bool on) { tf32_allowed = on; }
bool allow_tf32() { return tf32_allowed; }

}  // namespace kiln::cuda
