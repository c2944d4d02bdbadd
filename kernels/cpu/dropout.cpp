// CPU dropout (core/dispatch/dropout.h): one Philox block gives the four words of elements
// 4b .. 4b+3, so each iteration computes one block and masks four elements.
#include <cstdint>

#include "core/dispatch/dropout.h"
#include "core/philox.h"

namespace kiln {
namespace {

template <class T>
void dropout_typed(T* out, const T* in, int64_t n, uint64_t seed, uint64_t offset,
                   uint32_t threshold, double scale) {
  using A = opmath_t<T>;
  const Philox4x32 philox(seed);
  const A keep = static_cast<A>(scale);
  const int64_t blocks = (n + 3) / 4;
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const PhiloxWords words = philox.block(static_cast<uint64_t>(b), offset);
    for (int64_t k = 0; k < 4 && 4 * b + k < n; ++k) {
      const int64_t i = 4 * b + k;
      // A multiply rather than a select: a NaN or inf input stays visible, as in PyTorch.
      const A factor = (words.w[k] >> 8) < threshold ? A(0) : keep;
      out[i] = static_cast<T>(static_cast<A>(in[i]) * factor);
    }
  }
}

void dropout_cpu(Tensor& out, const Tensor& in, uint64_t seed, uint64_t offset, uint32_t threshold,
                 double scale) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous() && in.dtype() == out.dtype() &&
                 in.numel() == out.numel(),
             "dropout kernel: ", in.meta_str(), " -> ", out.meta_str());
  KILN_DISPATCH_FLOATING(in.dtype(), "dropout", [&] {
    dropout_typed(static_cast<scalar_t*>(out.data_ptr()),
                  static_cast<const scalar_t*>(in.data_ptr()), in.numel(), seed, offset,
                  threshold, scale);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(dropout_stub, CPU, &dropout_cpu);

}  // namespace kiln
