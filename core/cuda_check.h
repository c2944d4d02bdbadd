// Check macros for every CUDA runtime, cuBLAS, cuDNN and NCCL call: a failure throws
// kiln::Error naming the call, the file and the line. Include only in CUDA-aware sources.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define KILN_CUDA_CHECK(call)                                                        \
  do {                                                                               \
    cudaError_t kiln_err_ = (call);                                                  \
    if (kiln_err_ != cudaSuccess)                                                    \
      KILN_FAIL("CUDA error: ", #call, " failed: ", cudaGetErrorString(kiln_err_));  \
  } while (0)

// Checks that the last kernel launch was well formed (grid size, shared memory, ...).
#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())

#define KILN_CUBLAS_CHECK(call)                                                      \
  do {                                                                               \
    int kiln_st_ = static_cast<int>(call);                                           \
    if (kiln_st_ != 0) KILN_FAIL("cuBLAS error ", kiln_st_, ": ", #call, " failed"); \
  } while (0)

#define KILN_CUDNN_CHECK(call)                                                       \
  do {                                                                               \
    int kiln_st_ = static_cast<int>(call);                                           \
    if (kiln_st_ != 0) KILN_FAIL("cuDNN error ", kiln_st_, ": ", #call, " failed");  \
  } while (0)

#define KILN_NCCL_CHECK(call)                                                        \
  do {                                                                               \
    int kiln_st_ = static_cast<int>(call);                                           \
    if (kiln_st_ != 0) KILN_FAIL("NCCL error ", kiln_st_, ": ", #call, " failed");   \
  } while (0)
