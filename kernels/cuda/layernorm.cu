// CUDA layer norm over the last dim, plain and fused with the residual add
// (core/dispatch/transformer.h): dispatch, launch and registration. The kernels, their launch
// geometry and how they split the work are in kernels/cuda/layernorm_kernels.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/cuda_context.h"
#include "core/dispatch/transformer.h"
#include "kernels/cuda/layernorm_kernels.cuh"
#include "kernels/transformer_common.h"

namespace kiln {
namespace {

using namespace layernorm_kernels;

void layer_norm_cuda(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                     const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  check_layer_norm_args(y, mean, rstd, sum, x, residual, weight, bias);
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    T* yp = static_cast<T*>(y.data_ptr());
    T* sp = data_or_null_mut<T>(sum);
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* rp = data_or_null_mut<const T>(residual);
    const int vec = cuda::vec_width<T>(cols, {yp, sp, xp, rp});
    cuda::with_vec_width<T>(vec, [&](auto v) {
      layer_norm_kernel<T, decltype(v)::value><<<row_blocks(rows), kRowThreads, 0, stream>>>(
          yp, static_cast<A*>(mean.data_ptr()), static_cast<A*>(rstd.data_ptr()), sp, xp, rp,
          data_or_null_mut<const A>(weight), data_or_null_mut<const A>(bias), rows, cols, static_cast<A>(eps));
    });
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void layer_norm_backward_cuda(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy, const Tensor& x,
                              const Tensor& mean, const Tensor& rstd, const Tensor& weight) {
  check_layer_norm_backward_args(dx, dweight, dbias, dy, x, mean, rstd, weight);
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0) return;
  cuda::DeviceGuard guard(x.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(x.dtype(), "layer_norm backward", [&] {
    using T = scalar_t;
    using A = opmath_t<T>;
    const T* dyp = static_cast<const T*>(dy.data_ptr());
    const T* xp = static_cast<const T*>(x.data_ptr());
    const A* mp = static_cast<const A*>(mean.data_ptr());
    const A* rp = static_cast<const A*>(rstd.data_ptr());
    T* dxp = data_or_null_mut<T>(dx);
    const A* wp = data_or_null_mut<const A>(weight);
    const int vec = cuda::vec_width<T>(cols, {dxp, dyp, xp});
    const TensorOptions acc_opts{accumulate_dtype(x.dtype()), x.device()};
    const int64_t sms = cuda::device_properties().multiProcessorCount;
    const int64_t col_blocks = column_blocks(cols);
    Tensor part_w, part_b;
    int64_t chunks = 0;  // partial rows written
    bool one_pass = false;
    if (dweight.defined() || dbias.defined()) {
      const int64_t blocks = fused_backward_blocks(rows, sms);
      cuda::with_vec_width<T>(vec, [&](auto v) {
        constexpr int kVec = decltype(v)::value;
        one_pass = with_groups<kVec>(cols / kVec, [&](auto groups) {
          chunks = blocks;
          part_w = dweight.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
          part_b = dbias.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
          layer_norm_backward_fused_kernel<T, kVec, decltype(groups)::value>
              <<<blocks, kFusedThreads, fused_backward_shared_bytes<A>(cols), stream>>>(
                  dxp, data_or_null_mut<A>(part_w), data_or_null_mut<A>(part_b), dyp, xp, mp, rp, wp, rows, cols);
        });
      });
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (!one_pass && dxp) {
      cuda::with_vec_width<T>(vec, [&](auto v) {
        layer_norm_dx_kernel<T, decltype(v)::value><<<row_blocks(rows), kRowThreads, 0, stream>>>(
            dxp, dyp, xp, mp, rp, wp, rows, cols);
      });
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (!one_pass && (dweight.defined() || dbias.defined())) {
      chunks = param_chunks(rows, cols, sms);
      const int64_t rows_per_chunk = cuda::ceil_div(rows, chunks);
      part_w = dweight.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
      part_b = dbias.defined() ? Tensor::empty({chunks, cols}, acc_opts) : Tensor();
      layer_norm_param_partials_kernel<T><<<dim3(col_blocks, chunks), kColumnThreads, 0, stream>>>(
          data_or_null_mut<A>(part_w), data_or_null_mut<A>(part_b), dyp, xp, mp, rp, rows, cols, rows_per_chunk);
      KILN_CUDA_CHECK_LAUNCH();
    }
    for (auto [out, part] : {std::pair{&dweight, &part_w}, std::pair{&dbias, &part_b}}) {
      if (!out->defined()) continue;
      sum_partials_kernel<A><<<col_blocks, kColumnThreads, 0, stream>>>(
          static_cast<A*>(out->data_ptr()), static_cast<const A*>(part->data_ptr()), chunks, cols);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace

KILN_REGISTER_KERNEL(layer_norm_stub, CUDA, &layer_norm_cuda);
KILN_REGISTER_KERNEL(layer_norm_backward_stub, CUDA, &layer_norm_backward_cuda);

}  // namespace kiln
