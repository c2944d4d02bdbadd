// CUDA embedding (core/dispatch/transformer.h).
//
//   forward    one thread per 16-byte word of the output: a row copy. A bad index gives a
//              NaN row (the GPU cannot throw without waiting for the kernel).
//   backward   deterministic, no atomics: a stable CUB radix sort of (token, position) pairs
//              groups each token's positions, still in increasing order; then for each run
//              of one token (found where the sorted key changes), one thread per column adds
//              the run's gradient rows in that order and writes the token's row once
//              (16-bit weights sum in f32 and round once). Rows of unused tokens are zeroed
//              first. The same bits on every run, whatever the launch timing.
// A token repeated k times costs one thread k serial row reads; GPT-2 batches of natural text
// repeat their commonest tokens a few hundred times in 8192 positions.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/cuda_context.h"
#include "core/dispatch/transformer.h"
#include "kernels/cuda/vector_access.cuh"
#include "kernels/transformer_common.h"

namespace kiln {
namespace {

using cuda::ceil_div;
using cuda::load_vec;
using cuda::store_vec;
constexpr int kThreads = 256;

// ------------------------------------------------------------------ forward
template <class T, class Idx, int kVec>
__global__ void embedding_kernel(T* __restrict__ out, const T* __restrict__ weight, const Idx* __restrict__ idx,
                                 int64_t n, int64_t vocab, int64_t cols) {
  using V = cuda::Vec<T, kVec>;
  const int64_t nvec = cols / kVec;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * nvec;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / nvec, j = e % nvec;
    const int64_t v = static_cast<int64_t>(idx[i]);
    V word;
    if (v >= 0 && v < vocab) {
      word = reinterpret_cast<const V*>(weight + v * cols)[j];
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) word.v[k] = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
    }
    reinterpret_cast<V*>(out + i * cols)[j] = word;
  }
}

// ------------------------------------------------------------------ backward
// Sort keys: the token, or `vocab` for a bad index (sorted last, then skipped); values: the
// position.
template <class Idx>
__global__ void make_sort_pairs_kernel(uint32_t* __restrict__ keys, int32_t* __restrict__ positions,
                                       const Idx* __restrict__ idx, int64_t n, int64_t vocab) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = static_cast<int64_t>(idx[i]);
    keys[i] = static_cast<uint32_t>(v >= 0 && v < vocab ? v : vocab);
    positions[i] = static_cast<int32_t>(i);
  }
}

// Thread (column word j, sorted slot s): when slot s starts a run of one token, sums the run's
// gradient rows in sorted (= position) order into that token's row.
template <class T, int kVec>
__global__ void embedding_backward_runs_kernel(T* __restrict__ grad_weight, const T* __restrict__ grad_out,
                                               const uint32_t* __restrict__ keys,
                                               const int32_t* __restrict__ positions, int64_t n,
                                               int64_t vocab, int64_t cols) {
  using A = opmath_t<T>;
  const int64_t nvec = cols / kVec;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= nvec) return;
  for (int64_t s = blockIdx.y; s < n; s += gridDim.y) {
    const uint32_t key = keys[s];
    if (key >= vocab || (s > 0 && keys[s - 1] == key)) continue;  // not the start of a valid run
    A acc[kVec] = {};
    for (int64_t r = s; r < n && keys[r] == key; ++r) {
      A g[kVec];
      load_vec<kVec>(grad_out + static_cast<int64_t>(positions[r]) * cols, j, g);
#pragma unroll
      for (int k = 0; k < kVec; ++k) acc[k] += g[k];
    }
    store_vec<kVec>(grad_weight + static_cast<int64_t>(key) * cols, j, acc);
  }
}

void embedding_cuda(Tensor& out, const Tensor& weight, const Tensor& indices) {
  check_embedding_args(out, weight, indices, "embedding kernel");
  const int64_t n = out.size(0), vocab = weight.size(0), cols = weight.size(1);
  if (n == 0 || cols == 0) return;
  cuda::DeviceGuard guard(weight.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_DISPATCH_FLOATING(weight.dtype(), "embedding", [&] {
    using T = scalar_t;
    T* o = static_cast<T*>(out.data_ptr());
    const T* w = static_cast<const T*>(weight.data_ptr());
    KILN_DISPATCH_INDEX(indices.dtype(), "embedding", [&] {
      const auto* idx = static_cast<const scalar_t*>(indices.data_ptr());
      cuda::with_vec_width<T>(cuda::vec_width<T>(cols, {o, w}), [&](auto v) {
        constexpr int kVec = decltype(v)::value;
        embedding_kernel<T, scalar_t, kVec>
            <<<cuda::grid_for(n * (cols / kVec), kThreads), kThreads, 0, stream>>>(o, w, idx, n, vocab, cols);
      });
      KILN_CUDA_CHECK_LAUNCH();
    });
  });
}

void embedding_backward_cuda(Tensor& grad_weight, const Tensor& grad_out, const Tensor& indices) {
  check_embedding_args(grad_out, grad_weight, indices, "embedding backward kernel");
  const int64_t n = grad_out.size(0), vocab = grad_weight.size(0), cols = grad_weight.size(1);
  KILN_CHECK(vocab < std::numeric_limits<int32_t>::max() && n < std::numeric_limits<int32_t>::max(),
             "embedding backward kernel: ", grad_weight.meta_str(), " with ", n,
             " indices is beyond the 32-bit sort keys");
  cuda::DeviceGuard guard(grad_weight.device().index);
  cudaStream_t stream = cuda::current_stream();
  KILN_CUDA_CHECK(cudaMemsetAsync(grad_weight.data_ptr(), 0, grad_weight.numel() * grad_weight.element_size(), stream));
  if (n == 0 || cols == 0) return;

  const Device dev = grad_weight.device();
  // keys_in, keys_out, positions_in, positions_out: 4 * n 32-bit words.
  Tensor pairs = Tensor::empty({4, n}, {.dtype = DType::i32, .device = dev});
  auto* keys_in = static_cast<uint32_t*>(pairs.data_ptr());
  uint32_t* keys_out = keys_in + n;
  auto* pos_in = reinterpret_cast<int32_t*>(keys_out + n);
  int32_t* pos_out = pos_in + n;
  KILN_DISPATCH_INDEX(indices.dtype(), "embedding backward", [&] {
    make_sort_pairs_kernel<<<cuda::grid_for(n, kThreads), kThreads, 0, stream>>>(
        keys_in, pos_in, static_cast<const scalar_t*>(indices.data_ptr()), n, vocab);
  });
  KILN_CUDA_CHECK_LAUNCH();

  // Sort only the bits a key can use (keys go up to vocab).
  int end_bit = 1;
  while (end_bit < 32 && (uint64_t{1} << end_bit) <= static_cast<uint64_t>(vocab)) ++end_bit;
  size_t temp_bytes = 0;
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, pos_in, pos_out,
                                                  static_cast<int>(n), 0, end_bit, stream));
  Tensor temp = Tensor::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, {.dtype = DType::u8, .device = dev});
  KILN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, keys_in, keys_out, pos_in, pos_out,
                                                  static_cast<int>(n), 0, end_bit, stream));

  KILN_DISPATCH_FLOATING(grad_weight.dtype(), "embedding backward", [&] {
    using T = scalar_t;
    T* gw = static_cast<T*>(grad_weight.data_ptr());
    const T* go = static_cast<const T*>(grad_out.data_ptr());
    cuda::with_vec_width<T>(cuda::vec_width<T>(cols, {gw, go}), [&](auto v) {
      constexpr int kVec = decltype(v)::value;
      const int64_t nvec = cols / kVec;
      const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(nvec, 32) * 32));
      const dim3 grid(static_cast<unsigned>(ceil_div(nvec, threads)), static_cast<unsigned>(std::min<int64_t>(n, 65535)));
      embedding_backward_runs_kernel<T, kVec><<<grid, threads, 0, stream>>>(gw, go, keys_out, pos_out, n, vocab, cols);
    });
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

KILN_REGISTER_KERNEL(embedding_stub, CUDA, &embedding_cuda);
KILN_REGISTER_KERNEL(embedding_backward_stub, CUDA, &embedding_backward_cuda);

}  // namespace kiln
