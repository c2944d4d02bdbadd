#include "core/dispatch/random.h"
#include "kernels/random_sample.h"

namespace kiln {
namespace {

template <class T>
void random_loop(T* p, int64_t n, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) p[i] = random_sample<T>(dist, seed, offset, i, a, b);
}

void random_cpu(Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) {
  KILN_DISPATCH_ALL(out.dtype(), "random", [&] {
    random_loop(static_cast<scalar_t*>(out.data_ptr()), out.numel(), dist, seed, offset, a, b);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(random_stub, CPU, &random_cpu);

}  // namespace kiln
