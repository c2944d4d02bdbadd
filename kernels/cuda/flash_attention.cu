// CUDA flash attention (core/dispatch/attention.h): the launchers of the kernels in
// flash_attention_kernels.cuh (where the algorithm is described), for f32, bf16 and f16 storage
// with f32 arithmetic and head dims 16, 32, 64 and 128 (a template parameter, so the per-row
// accumulators live in registers).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/cuda_context.h"
#include "core/dispatch/attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"

namespace kiln {
namespace {

using flash_kernels::BackwardPtrs;
using flash_kernels::kRows;

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// ------------------------------------------------------------------ launchers
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
}

// Calls f(std::integral_constant<int, D>) for the supported head dims.
template <class F>
void with_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default:
      KILN_FAIL("flash attention on CUDA supports head dims 16, 32, 64 and 128, got ", D,
                " (use the naive or batched backend)");
  }
}

// f32, bf16 and f16 with f32 arithmetic; f64 would lose its precision here.
template <class F>
void with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(BFloat16{});
    case DType::f16: return f(Half{});
    default:
      KILN_FAIL("flash attention on CUDA supports f32, bf16 and f16, got ", dtype,
                " (use the naive backend for f64)");
  }
}

void check_grid(int64_t heads, int64_t T) {
  KILN_CHECK(heads <= 65535, "flash attention: batch * heads = ", heads, " exceeds 65535");
  KILN_CHECK(T <= (int64_t{1} << 30), "flash attention: sequence length ", T, " is too long");
}

void flash_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   bool causal, double scale) {
  const int64_t BH = q.size(0), Tq = q.size(1), Tk = k.size(1);
  check_grid(BH, std::max(Tq, Tk));
  cuda::DeviceGuard guard(q.device().index);
  cudaStream_t stream = cuda::current_stream();
  with_storage_type(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_head_dim(q.size(2), [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const size_t smem = flash_kernels::forward_smem_bytes<D>();
      auto kernel = flash_kernels::flash_forward_kernel<T, D>;
      allow_smem(kernel, smem);
      const dim3 grid(ceil_div(Tq, kRows), static_cast<unsigned>(BH));
      kernel<<<grid, kRows, smem, stream>>>(
          static_cast<T*>(out.data_ptr()), static_cast<float*>(lse.data_ptr()),
          static_cast<const T*>(q.data_ptr()), static_cast<const T*>(k.data_ptr()),
          static_cast<const T*>(v.data_ptr()), static_cast<int>(Tq), static_cast<int>(Tk), causal,
          static_cast<float>(scale));
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void flash_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                    const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, bool causal,
                    double scale) {
  const int64_t BH = q.size(0), Tq = q.size(1), Tk = k.size(1), D_ = q.size(2);
  check_grid(BH, std::max(Tq, Tk));
  cuda::DeviceGuard guard(q.device().index);
  cudaStream_t stream = cuda::current_stream();
  Tensor delta = Tensor::empty({BH, Tq}, {DType::f32, q.device()});
  with_storage_type(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const auto* qp = static_cast<const T*>(q.data_ptr());
    const auto* kp = static_cast<const T*>(k.data_ptr());
    const auto* vp = static_cast<const T*>(v.data_ptr());
    const auto* dop = static_cast<const T*>(dout.data_ptr());
    flash_kernels::flash_delta_kernel<T><<<cuda::grid_for(BH * Tq, 256), 256, 0, stream>>>(
        static_cast<float*>(delta.data_ptr()), dop, static_cast<const T*>(out.data_ptr()), BH * Tq,
        static_cast<int>(D_));
    KILN_CUDA_CHECK_LAUNCH();
    const BackwardPtrs a{static_cast<const float*>(lse.data_ptr()), static_cast<const float*>(delta.data_ptr()),
                         static_cast<int>(Tq), static_cast<int>(Tk), causal, static_cast<float>(scale)};
    with_head_dim(D_, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      const size_t smem_kv = flash_kernels::dkdv_smem_bytes<D>();
      auto dkdv = flash_kernels::flash_backward_dkdv_kernel<T, D>;
      allow_smem(dkdv, smem_kv);
      dkdv<<<dim3(ceil_div(Tk, kRows), static_cast<unsigned>(BH)), kRows, smem_kv, stream>>>(
          static_cast<T*>(dk.data_ptr()), static_cast<T*>(dv.data_ptr()), qp, kp, vp, dop, a);
      KILN_CUDA_CHECK_LAUNCH();
      const size_t smem_q = flash_kernels::dq_smem_bytes<D>();
      auto dqk = flash_kernels::flash_backward_dq_kernel<T, D>;
      allow_smem(dqk, smem_q);
      dqk<<<dim3(ceil_div(Tq, kRows), static_cast<unsigned>(BH)), kRows, smem_q, stream>>>(
          static_cast<T*>(dq.data_ptr()), qp, kp, vp, dop, a);
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(flash_attention_forward_stub, CUDA, &flash_forward);
KILN_REGISTER_KERNEL(flash_attention_backward_stub, CUDA, &flash_backward);

}  // namespace kiln
