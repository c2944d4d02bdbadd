// CUDA fused classifier (core/dispatch/transformer.h), llm.c's fused_classifier: dispatch,
// launch and registration. The kernel, its launch geometry and how it works are in
// kernels/cuda/classifier_kernels.cuh.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/transformer.h"
#include "kernels/cuda/classifier_kernels.cuh"
#include "kernels/transformer_common.h"

namespace kiln {
namespace {

using namespace classifier_kernels;

void fused_cross_entropy_cuda(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                              const Tensor& grad_scale, int64_t valid_classes, int64_t ignore_index) {
  check_fused_cross_entropy_args(losses, dlogits, logits, targets, grad_scale, valid_classes);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(logits.device().index);
  cudaStream_t stream = cuda::current_stream();
  const int threads = classifier_threads(classes);
  KILN_DISPATCH_FLOATING(logits.dtype(), "fused_cross_entropy", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const T* x = static_cast<const T*>(logits.data_ptr());
    T* d = data_or_null_mut<T>(dlogits);
    A* l = static_cast<A*>(losses.data_ptr());
    const A* s = static_cast<const A*>(grad_scale.data_ptr());
    KILN_DISPATCH_INDEX(targets.dtype(), "fused_cross_entropy", [&] {
      const auto* t = static_cast<const scalar_t*>(targets.data_ptr());
      cuda::with_vec_width<T>(cuda::vec_width<T>(classes, {x, d}), [&](auto v) {
        fused_cross_entropy_kernel<T, scalar_t, decltype(v)::value>
            <<<classifier_blocks(rows), threads, 0, stream>>>(l, d, x, t, s, rows, classes, valid_classes,
                                                              ignore_index);
      });
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(fused_cross_entropy_stub, CUDA, &fused_cross_entropy_cuda);

}  // namespace kiln
