// CUDA reductions over a contiguous [outer, reduced, inner] input (core/dispatch/reduce.h).
//
// The kernel depends on the shape:
//   inner == 1, short rows      one warp per row: shuffles only;
//   inner == 1, long rows       one block per row: shuffles, then shared memory across warps,
//                               with 16-byte loads when the rows are aligned;
//   inner == 1, few huge rows   two passes (a full sum of 1<<24 elements is one such row):
//                               `parts` blocks per row write partial results, then one warp
//                               per row folds them;
//   inner > 1                   column kernel: threads across inner (coalesced loads), the
//                               block's y dimension splits the reduced range and shared memory
//                               combines it; when that leaves the GPU idle, grid.z splits the
//                               range further and a second column pass folds the parts.
// No atomics anywhere: the split points depend only on the shape, so results are bitwise
// reproducible. The ops are the CPU kernel's accumulators (kernels/reduce_ops.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/reduce.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/reduce_ops.h"

namespace kiln {

// Moves both fields of an argmax/argmin accumulator between lanes, for block_reduce.cuh. It
// sits beside ValueIndex in namespace kiln, not in the unnamed namespace below, so that
// argument-dependent lookup finds it.
template <class V>
__device__ __forceinline__ ValueIndex<V> shfl_xor(ValueIndex<V> v, int mask) {
  return {cuda::shfl_xor(v.value, mask), cuda::shfl_xor(v.index, mask)};
}

namespace {

using cuda::ceil_div;
using cuda::kWarp;
constexpr int64_t kWarpRowMax = 1024;        // rows up to this long get one warp each
constexpr int64_t kSplitRowMin = 1 << 16;    // rows from this long may be split...
constexpr int64_t kSplitMaxRows = 64;        // ...when there are this few of them
constexpr int64_t kElementsPerPart = 1 << 14;
constexpr int64_t kMaxParts = 1024;          // pass 2 folds them with one warp per row
constexpr int64_t kMaxBlocks = 1 << 20;      // grid-stride loops cover the rest

// ------------------------------------------------------------------------ ops
// Folds partial results of `Op` (pass two of a split reduction).
template <class Op>
struct PartialsOp {
  using Acc = typename Op::Acc;
  Op op;
  __device__ Acc identity() const { return op.identity(); }
  __device__ Acc load(Acc a, int64_t, int64_t) const { return a; }
  __device__ Acc combine(Acc a, Acc b) const { return op.combine(a, b); }
};

// ------------------------------------------------------------------------ finishers
template <class Acc>
struct StorePartial {
  Acc* out;
  __device__ void operator()(int64_t j, const Acc& a) const { out[j] = a; }
};

// ------------------------------------------------------------------------ building blocks
// op.combine as the function block_reduce.cuh folds with.
template <class Op>
struct CombineOf {
  Op op;
  template <class Acc>
  __device__ __forceinline__ Acc operator()(const Acc& a, const Acc& b) const { return op.combine(a, b); }
};

template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// This thread's share of p[0, n): elements (or kVec-element vectors) tid, tid + nthreads, ...
// With kVec > 1, p is 16-byte aligned and n a multiple of kVec. j names the output.
template <int kVec, class T, class Op>
__device__ typename Op::Acc thread_reduce(const Op& op, const T* __restrict__ p, int64_t n,
                                          int64_t tid, int64_t nthreads, int64_t j) {
  auto acc = op.identity();
  if constexpr (kVec > 1) {
    const auto* pv = reinterpret_cast<const Vec<T, kVec>*>(p);
    for (int64_t v = tid; v < n / kVec; v += nthreads) {
      const Vec<T, kVec> chunk = pv[v];
#pragma unroll
      for (int k = 0; k < kVec; ++k) acc = op.combine(acc, op.load(chunk.v[k], v * kVec + k, j));
    }
  } else {
    for (int64_t r = tid; r < n; r += nthreads) acc = op.combine(acc, op.load(p[r], r, j));
  }
  return acc;
}

// ------------------------------------------------------------------------ kernels
template <class T, class Op, class Finish>
__global__ void reduce_rows_warp_kernel(Op op, Finish finish, const T* __restrict__ in,
                                        int64_t rows, int64_t reduced) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / kWarp; row < rows; row += gridDim.x * warps) {
    auto acc = thread_reduce<1>(op, in + row * reduced, reduced, lane, kWarp, row);
    acc = cuda::warp_reduce(acc, CombineOf<Op>{op});
    if (lane == 0) finish(row, acc);
  }
}

template <int kVec, class T, class Op, class Finish>
__global__ void reduce_rows_block_kernel(Op op, Finish finish, const T* __restrict__ in,
                                         int64_t rows, int64_t reduced) {
  __shared__ typename Op::Acc scratch[kWarp];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    auto acc = thread_reduce<kVec>(op, in + row * reduced, reduced, threadIdx.x, blockDim.x, row);
    acc = cuda::block_reduce(acc, CombineOf<Op>{op}, op.identity(), scratch);
    if (threadIdx.x == 0) finish(row, acc);
  }
}

// Pass one of a split row: block (c, row) takes the elements its threads reach striding by
// gridDim.x * blockDim.x and writes partials[row * gridDim.x + c].
template <int kVec, class T, class Op>
__global__ void reduce_rows_partial_kernel(Op op, const T* __restrict__ in, int64_t reduced,
                                           typename Op::Acc* __restrict__ partials) {
  __shared__ typename Op::Acc scratch[kWarp];
  const int64_t row = blockIdx.y;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  auto acc = thread_reduce<kVec>(op, in + row * reduced, reduced, tid, nthreads, row);
  acc = cuda::block_reduce(acc, CombineOf<Op>{op}, op.identity(), scratch);
  if (threadIdx.x == 0) partials[row * gridDim.x + blockIdx.x] = acc;
}

// Column reduction. threadIdx.x walks inner (adjacent threads read adjacent addresses),
// threadIdx.y splits the block's share of the reduced range, and shared memory folds the y
// partials in a fixed tree. blockIdx.z takes slice z of the reduced range; with gridDim.z > 1
// the results are partials laid out [outer, gridDim.z, inner].
template <class T, class Op, class Finish>
__global__ void reduce_columns_kernel(Op op, Finish finish, const T* __restrict__ in,
                                      int64_t outer, int64_t reduced, int64_t inner) {
  using Acc = typename Op::Acc;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  Acc* smem = reinterpret_cast<Acc*>(smem_bytes);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t slice = (reduced + gridDim.z - 1) / gridDim.z;
  const int64_t r_begin = blockIdx.z * slice;
  const int64_t r_end = min(reduced, r_begin + slice);
  const int cell = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    Acc acc = op.identity();
    if (i < inner) {
      const T* p = in + o * reduced * inner + i;
      for (int64_t r = r_begin + threadIdx.y; r < r_end; r += blockDim.y)
        acc = op.combine(acc, op.load(p[r * inner], r, o * inner + i));
    }
    smem[cell] = acc;
    __syncthreads();
    for (int s = blockDim.y / 2; s > 0; s >>= 1) {
      if (threadIdx.y < s) smem[cell] = op.combine(smem[cell], smem[cell + s * blockDim.x]);
      __syncthreads();
    }
    if (threadIdx.y == 0 && i < inner) finish((o * gridDim.z + blockIdx.z) * inner + i, smem[threadIdx.x]);
    __syncthreads();  // smem is reused for the next o
  }
}

// ------------------------------------------------------------------------ launchers
int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

template <class Acc>
Acc* scratch(Tensor& holder, int64_t count, Device device) {
  holder = Tensor::empty({count * static_cast<int64_t>(sizeof(Acc))}, {DType::u8, device});
  return static_cast<Acc*>(holder.data_ptr());
}

template <class T, class Op, class Finish>
void launch_columns(const Op& op, const Finish& finish, const T* in, int64_t outer,
                    int64_t reduced, int64_t inner, Device device) {
  using Acc = typename Op::Acc;
  cudaStream_t stream = cuda::current_stream();
  const int bx = static_cast<int>(std::min<int64_t>(kWarp, next_pow2(inner)));
  const int by = static_cast<int>(std::min<int64_t>(256 / bx, next_pow2(reduced)));
  const dim3 block(bx, by);
  const int64_t tiles = ceil_div(inner, bx);
  const int64_t ys = std::min<int64_t>(outer, 65535);
  const size_t smem = sizeof(Acc) * bx * by;
  // Too few blocks to fill the GPU and a long range per thread: split the range (grid.z).
  int64_t slices = 1;
  if (tiles * ys < 256 && reduced >= 16 * by) {
    slices = std::min<int64_t>(ceil_div(reduced, 64 * by), ceil_div(512, tiles * ys));
    slices = std::clamp<int64_t>(slices, 1, 65535);
  }
  if (slices == 1) {
    reduce_columns_kernel<<<dim3(tiles, ys, 1), block, smem, stream>>>(op, finish, in, outer, reduced, inner);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  Tensor holder;
  Acc* partials = scratch<Acc>(holder, outer * slices * inner, device);
  reduce_columns_kernel<<<dim3(tiles, ys, slices), block, smem, stream>>>(
      op, StorePartial<Acc>{partials}, in, outer, reduced, inner);
  KILN_CUDA_CHECK_LAUNCH();
  const int by2 = static_cast<int>(std::min<int64_t>(256 / bx, next_pow2(slices)));
  reduce_columns_kernel<<<dim3(tiles, ys, 1), dim3(bx, by2), sizeof(Acc) * bx * by2, stream>>>(
      PartialsOp<Op>{op}, finish, partials, outer, slices, inner);
  KILN_CUDA_CHECK_LAUNCH();
}

template <class T, class Op, class Finish>
void launch_rows(const Op& op, const Finish& finish, const T* in, int64_t rows, int64_t reduced,
                 Device device) {
  using Acc = typename Op::Acc;
  cudaStream_t stream = cuda::current_stream();
  constexpr int kVec = sizeof(T) <= 16 ? static_cast<int>(16 / sizeof(T)) : 1;
  const bool vec = kVec > 1 && reduced % kVec == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0;
  if (reduced <= kWarpRowMax) {
    constexpr int threads = 256;
    const int64_t blocks = std::min(ceil_div(rows, threads / kWarp), kMaxBlocks);
    reduce_rows_warp_kernel<<<blocks, threads, 0, stream>>>(op, finish, in, rows, reduced);
    KILN_CUDA_CHECK_LAUNCH();
  } else if (rows <= kSplitMaxRows && reduced >= kSplitRowMin) {
    const int64_t parts = std::min(kMaxParts, ceil_div(reduced, kElementsPerPart));
    Tensor holder;
    Acc* partials = scratch<Acc>(holder, rows * parts, device);
    const dim3 grid(parts, rows);
    if (vec) reduce_rows_partial_kernel<kVec><<<grid, 256, 0, stream>>>(op, in, reduced, partials);
    else reduce_rows_partial_kernel<1><<<grid, 256, 0, stream>>>(op, in, reduced, partials);
    KILN_CUDA_CHECK_LAUNCH();
    const int64_t blocks = ceil_div(rows, 256 / kWarp);
    reduce_rows_warp_kernel<<<blocks, 256, 0, stream>>>(PartialsOp<Op>{op}, finish, partials, rows, parts);
    KILN_CUDA_CHECK_LAUNCH();
  } else {
    const int threads = reduced >= 8192 ? 512 : 256;
    const int64_t blocks = std::min(rows, kMaxBlocks);
    if (vec) reduce_rows_block_kernel<kVec><<<blocks, threads, 0, stream>>>(op, finish, in, rows, reduced);
    else reduce_rows_block_kernel<1><<<blocks, threads, 0, stream>>>(op, finish, in, rows, reduced);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

template <class T, class Op, class Finish>
void launch_reduce(const Op& op, const Finish& finish, const T* in, int64_t outer,
                   int64_t reduced, int64_t inner, Device device) {
  if (outer * inner == 0) return;
  if (inner == 1) launch_rows(op, finish, in, outer, reduced, device);
  else launch_columns(op, finish, in, outer, reduced, inner, device);
}

void reduce_cuda(ReduceOp op, Tensor& out, const Tensor& in, int64_t outer, int64_t reduced,
                 int64_t inner, int64_t correction) {
  check_reduce_args(out, in, outer, reduced, inner);
  cuda::DeviceGuard guard(in.device().index);
  KILN_DISPATCH_ALL(in.dtype(), "reduce", [&] {
    const auto* x = static_cast<const scalar_t*>(in.data_ptr());
    auto run = [&](const auto& acc, const auto& finish) {
      launch_reduce(acc, finish, x, outer, reduced, inner, in.device());
    };
    reduce_with<scalar_t>(op, out, in, outer, reduced, inner, correction, run);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(reduce_stub, CUDA, &reduce_cuda);

}  // namespace kiln
