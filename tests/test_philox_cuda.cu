// The CUDA side of core/philox.h draws the same numbers as the host side: bit for bit for
// uniforms and integers, to ~1e-6 relative for normals (logf/sinf/cosf differ by a few ulp
// between CUDA and host libm). Lane 0 must also match cuRAND's Philox4_32_10 stream.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <curand_kernel.h>
#include <vector>

#include "core/cuda_check.h"
#include "core/philox.h"

namespace kiln {
namespace {

constexpr uint64_t kSeed = 0x853c49e6748fea9bull, kOffset = 12345;
constexpr int kN = 100'000;

// One thread per element, grid-stride, like the real random-fill kernels.
__global__ void fill_kernel(float* uniform, double* uniform64, float* normal, int64_t* ints,
                            int64_t* wide_ints, uint32_t* raw, uint32_t* curand_raw, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    uniform[i] = uniform_float(kSeed, kOffset, i);
    uniform64[i] = uniform_double(kSeed, kOffset, i);
    normal[i] = normal_float(kSeed, kOffset, i);
    ints[i] = uniform_int(kSeed, kOffset, i, -3, 1000);
    wide_ints[i] = uniform_int(kSeed, kOffset, i, -(int64_t{1} << 45), int64_t{1} << 50);
    raw[i] = philox_u32(kSeed, kOffset, i);
    curandStatePhilox4_32_10_t state;
    curand_init(kSeed, /*subsequence=*/kOffset, /*offset=*/i, &state);
    curand_raw[i] = curand(&state);
  }
}

bool has_cuda_device() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

// Copies a device buffer back and frees it.
template <class T>
std::vector<T> to_host_and_free(T* device) {
  std::vector<T> host(kN);
  KILN_CUDA_CHECK(cudaMemcpy(host.data(), device, kN * sizeof(T), cudaMemcpyDeviceToHost));
  KILN_CUDA_CHECK(cudaFree(device));
  return host;
}

template <class T>
T* device_buffer() {
  T* p = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&p, kN * sizeof(T)));
  return p;
}

TEST(PhiloxCuda, DeviceMatchesHost) {
  if (!has_cuda_device()) GTEST_SKIP() << "no CUDA device";
  float* d_uniform = device_buffer<float>();
  double* d_uniform64 = device_buffer<double>();
  float* d_normal = device_buffer<float>();
  int64_t* d_ints = device_buffer<int64_t>();
  int64_t* d_wide = device_buffer<int64_t>();
  uint32_t* d_raw = device_buffer<uint32_t>();
  uint32_t* d_curand = device_buffer<uint32_t>();
  fill_kernel<<<128, 256>>>(d_uniform, d_uniform64, d_normal, d_ints, d_wide, d_raw, d_curand, kN);
  KILN_CUDA_CHECK_LAUNCH();
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  auto uniform = to_host_and_free(d_uniform);
  auto uniform64 = to_host_and_free(d_uniform64);
  auto normal = to_host_and_free(d_normal);
  auto ints = to_host_and_free(d_ints);
  auto wide = to_host_and_free(d_wide);
  auto raw = to_host_and_free(d_raw);
  auto curand_raw = to_host_and_free(d_curand);

  for (int i = 0; i < kN; ++i) {
    ASSERT_EQ(raw[i], philox_u32(kSeed, kOffset, i)) << "element " << i;
    ASSERT_EQ(curand_raw[i], raw[i]) << "cuRAND layout, element " << i;
    ASSERT_EQ(uniform[i], uniform_float(kSeed, kOffset, i)) << "element " << i;
    ASSERT_EQ(uniform64[i], uniform_double(kSeed, kOffset, i)) << "element " << i;
    ASSERT_EQ(ints[i], uniform_int(kSeed, kOffset, i, -3, 1000)) << "element " << i;
    ASSERT_EQ(wide[i], uniform_int(kSeed, kOffset, i, -(int64_t{1} << 45), int64_t{1} << 50))
        << "element " << i;
    // 1e-6 relative; the 1e-7 floor covers results near 0, where r*cos is a tiny difference.
    float host = normal_float(kSeed, kOffset, i);
    ASSERT_NEAR(normal[i], host, 1e-6f * std::fabs(host) + 1e-7f) << "element " << i;
  }
}

}  // namespace
}  // namespace kiln
