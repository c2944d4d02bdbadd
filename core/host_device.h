// KILN_HOST_DEVICE marks a function that both the CPU kernels and the CUDA kernels call, so
// the two sides share one definition (Philox, 16-bit float conversions, pooling windows, ...).
#pragma once

#ifdef __CUDACC__
#define KILN_HOST_DEVICE __host__ __device__
#else
#define KILN_HOST_DEVICE
#endif
