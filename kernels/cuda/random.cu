#include "core/cuda_context.h"
#include "core/dispatch/random.h"
#include "kernels/random_sample.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void random_kernel(T* out, int64_t n, RandomDist dist, uint64_t seed, uint64_t offset,
                              double a, double b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = random_sample<T>(dist, seed, offset, i, a, b);
}

void random_cuda(Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
  const int64_t n = out.numel();
  if (n == 0) return;
  cuda::DeviceGuard guard(out.device().index);
  KILN_DISPATCH_ALL(out.dtype(), "random", [&] {
    random_kernel<<<cuda::grid_for(n, kThreads), kThreads, 0, cuda::current_stream()>>>(
        static_cast<scalar_t*>(out.data_ptr()), n, dist, seed, offset, a, b);
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

KILN_REGISTER_KERNEL(random_stub, CUDA, &random_cuda);

}  // namespace kiln
