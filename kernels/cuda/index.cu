// CUDA indexing kernels: grid-stride loops, one thread per output (select, gather) or source
// (index_add, scatter_add) element. A bad index sets a device-side error flag instead of a
// device assert (which would poison the CUDA context); the launcher reads the flag back after
// the kernel and throws the same kiln::Error as the CPU kernels.
//
// index_add and scatter_add use atomicAdd: with repeated indices the order of the float adds,
// and so the rounding, varies from run to run. Accepted for now; the embedding backward
// (index_select's gradient) will get a deterministic sort-based kernel of its own.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/cuda_context.h"
#include "core/dispatch/index.h"
#include "core/elementwise_layout.h"  // kMaxDims
#include "kernels/index_common.h"

namespace kiln {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------- the error flag
// err[0]: set to 1 by the first thread that meets a bad index; err[1]: that index.
// True when 0 <= v < size; otherwise reports v, and the thread skips the element.
__device__ __forceinline__ bool index_in_range(int64_t v, int64_t size, unsigned long long* err) {
  if (v >= 0 && v < size) return true;
  if (atomicCAS(err, 0ull, 1ull) == 0ull) err[1] = static_cast<unsigned long long>(v);
  return false;
}

class IndexErrorFlag {
 public:
  IndexErrorFlag(Device device, cudaStream_t stream)
      : buf_(empty({2}, {.dtype = DType::i64, .device = device})), stream_(stream) {
    KILN_CUDA_CHECK(cudaMemsetAsync(buf_.data_ptr(), 0, 2 * sizeof(int64_t), stream_));
  }
  unsigned long long* ptr() const { return static_cast<unsigned long long*>(buf_.data_ptr()); }
  // Waits for the kernel: the price of reporting which index was bad.
  void check(const char* op, int64_t dim, int64_t size) const {
    unsigned long long host[2] = {0, 0};
    KILN_CUDA_CHECK(cudaMemcpyAsync(host, ptr(), sizeof(host), cudaMemcpyDeviceToHost, stream_));
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (host[0] != 0) fail_index_out_of_range(op, static_cast<int64_t>(host[1]), dim, size);
  }

 private:
  Tensor buf_;
  cudaStream_t stream_;
};

// Runs launch(stream, err) on the device's current stream, then waits for the kernels and
// throws the CPU kernels' error if one of them met a bad index.
template <class F>
void launch_checking_indices(const char* op, Device device, int64_t dim, int64_t size, F&& launch) {
  cuda::DeviceGuard guard(device.index);
  cudaStream_t stream = cuda::current_stream();
  IndexErrorFlag flag(device, stream);
  launch(stream, flag.ptr());
  flag.check(op, dim, size);
}

// ---------------------------------------------------------------- atomics
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(int32_t* p, int32_t v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(int64_t* p, int64_t v) {
  // Two's complement: an unsigned add gives the signed sum.
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
}
__device__ __forceinline__ void atomic_add(Half* p, Half v) {
  atomicAdd(reinterpret_cast<__half*>(p), __ushort_as_half(v.bits));
}
__device__ __forceinline__ void atomic_add(BFloat16* p, BFloat16 v) {
  atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __ushort_as_bfloat16(v.bits));
}

// ---------------------------------------------------------------- index_select
// Copies whole rows in `Word`s (up to 16 bytes: one vector load per thread), so one kernel
// serves every dtype.
template <class Word, class I>
__global__ void index_select_kernel(Word* __restrict__ out, const Word* __restrict__ in,
                                    const I* __restrict__ idx, int64_t n, int64_t size,
                                    int64_t row_words, int64_t total, unsigned long long* err) {
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < total;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = w / row_words, r = w - j * row_words;
    const int64_t o = j / n, i = j - o * n;
    const int64_t v = idx[i];
    if (!index_in_range(v, size, err)) continue;
    out[w] = in[(o * size + v) * row_words + r];
  }
}

// The widest word (16, 8, 4, 2 or 1 bytes) that divides the row and both base addresses.
int word_bytes(int64_t row_bytes, const void* a, const void* b) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  int w = 16;
  while (w > 1 && (row_bytes % w != 0 || pa % w != 0 || pb % w != 0)) w /= 2;
  return w;
}

template <class Word, class I>
void launch_index_select(Tensor& out, const Tensor& in, const I* idx, int64_t n, const DimSplit& s,
                         int64_t row_bytes, unsigned long long* err, cudaStream_t stream) {
  const int64_t row_words = row_bytes / int64_t(sizeof(Word));
  const int64_t total = s.outer * n * row_words;
  if (total == 0) return;
  index_select_kernel<Word, I><<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
      static_cast<Word*>(out.data_ptr()), static_cast<const Word*>(in.data_ptr()), idx, n, s.size,
      row_words, total, err);
  KILN_CUDA_CHECK_LAUNCH();
}

void index_select_cuda(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index) {
  const DimSplit s = split_at(in.shape(), dim);
  const int64_t n = index.numel();
  const int64_t row_bytes = s.inner * int64_t(in.element_size());
  auto launch = [&](cudaStream_t stream, unsigned long long* err) {
    KILN_DISPATCH_INDEX(index.dtype(), "index_select", [&] {
      const scalar_t* idx = index.data<scalar_t>();
      switch (word_bytes(row_bytes, out.data_ptr(), in.data_ptr())) {
        case 16:
          return launch_index_select<uint4>(out, in, idx, n, s, row_bytes, err, stream);
        case 8:
          return launch_index_select<uint2>(out, in, idx, n, s, row_bytes, err, stream);
        case 4:
          return launch_index_select<uint32_t>(out, in, idx, n, s, row_bytes, err, stream);
        case 2:
          return launch_index_select<uint16_t>(out, in, idx, n, s, row_bytes, err, stream);
        default:
          return launch_index_select<uint8_t>(out, in, idx, n, s, row_bytes, err, stream);
      }
    });
  };
  launch_checking_indices("index_select", out.device(), dim, s.size, launch);
}

// ---------------------------------------------------------------- index_add
template <class T, class I>
__global__ void index_add_kernel(T* __restrict__ self, const T* __restrict__ src,
                                 const I* __restrict__ idx, int64_t n, int64_t size, int64_t inner,
                                 int64_t total, unsigned long long* err) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e / inner, r = e - j * inner;
    const int64_t o = j / n, i = j - o * n;
    const int64_t v = idx[i];
    if (!index_in_range(v, size, err)) continue;
    atomic_add(&self[(o * size + v) * inner + r], src[e]);
  }
}

void index_add_cuda(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  const DimSplit s = split_at(self.shape(), dim);
  const int64_t n = index.numel();
  const int64_t total = src.numel();
  if (total == 0) return;
  auto launch = [&](cudaStream_t stream, unsigned long long* err) {
    KILN_DISPATCH_INDEX(index.dtype(), "index_add", [&] {
      using index_t = scalar_t;
      dispatch_addable(self.dtype(), "index_add", [&](auto tag) {
        using T = decltype(tag);
        index_add_kernel<T, index_t><<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
            self.data<T>(), src.data<T>(), index.data<index_t>(), n, s.size, s.inner, total, err);
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  };
  launch_checking_indices("index_add", self.device(), dim, s.size, launch);
}

// ---------------------------------------------------------------- gather / scatter_add
// The index's shape and, for two other contiguous tensors, their strides: enough to map an
// index element to its source and destination. Passed to kernels by value.
struct IndexGeometry {
  int ndim = 0;
  int dim = 0;
  int64_t sizes[kMaxDims] = {};  // the index's shape
  int64_t strides_a[kMaxDims] = {};
  int64_t strides_b[kMaxDims] = {};
};

IndexGeometry make_geometry(const Tensor& index, int64_t dim, const Tensor& a, const Tensor& b) {
  KILN_CHECK(index.dim() <= kMaxDims, "index tensors with more than ", kMaxDims,
             " dims are not supported: ", index.meta_str());
  IndexGeometry g;
  g.ndim = static_cast<int>(index.dim());
  g.dim = static_cast<int>(dim);
  const Shape sa = contiguous_strides(a.shape()), sb = contiguous_strides(b.shape());
  for (int d = 0; d < g.ndim; ++d) {
    g.sizes[d] = index.size(d);
    g.strides_a[d] = sa[d];
    g.strides_b[d] = sb[d];
  }
  return g;
}

// Offsets in a and b of index element e over every dim but `dim` (where the caller adds the
// index for one of them), and e's own coordinate along `dim`.
__device__ __forceinline__ void geometry_offsets(const IndexGeometry& g, int64_t e, int64_t& oa,
                                                 int64_t& ob, int64_t& k) {
  oa = 0;
  ob = 0;
  k = 0;
  for (int d = g.ndim - 1; d >= 0; --d) {
    const int64_t c = e % g.sizes[d];
    e /= g.sizes[d];
    if (d == g.dim) {
      k = c;
      continue;
    }
    oa += c * g.strides_a[d];
    ob += c * g.strides_b[d];
  }
}

// a = in, b unused (out and index share index's contiguous layout).
template <class T, class I>
__global__ void gather_kernel(T* __restrict__ out, const T* __restrict__ in,
                              const I* __restrict__ idx, IndexGeometry g, int64_t size,
                              int64_t total, unsigned long long* err) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = idx[e];
    if (!index_in_range(v, size, err)) continue;
    int64_t oin, unused, k;
    geometry_offsets(g, e, oin, unused, k);
    out[e] = in[oin + v * g.strides_a[g.dim]];
  }
}

void gather_cuda(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index) {
  const int64_t total = index.numel();
  if (total == 0) return;
  const IndexGeometry g = make_geometry(index, dim, in, in);
  auto launch = [&](cudaStream_t stream, unsigned long long* err) {
    KILN_DISPATCH_INDEX(index.dtype(), "gather", [&] {
      using index_t = scalar_t;
      KILN_DISPATCH_ALL(in.dtype(), "gather", [&] {
        gather_kernel<scalar_t, index_t><<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
            out.data<scalar_t>(), in.data<scalar_t>(), index.data<index_t>(), g, in.size(dim), total, err);
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  };
  launch_checking_indices("gather", out.device(), dim, in.size(dim), launch);
}

// a = self, b = src.
template <class T, class I>
__global__ void scatter_add_kernel(T* __restrict__ self, const T* __restrict__ src,
                                   const I* __restrict__ idx, IndexGeometry g, int64_t size,
                                   int64_t total, unsigned long long* err) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = idx[e];
    if (!index_in_range(v, size, err)) continue;
    int64_t oself, osrc, k;
    geometry_offsets(g, e, oself, osrc, k);
    atomic_add(&self[oself + v * g.strides_a[g.dim]], src[osrc + k * g.strides_b[g.dim]]);
  }
}

void scatter_add_cuda(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  const int64_t total = index.numel();
  if (total == 0) return;
  const IndexGeometry g = make_geometry(index, dim, self, src);
  auto launch = [&](cudaStream_t stream, unsigned long long* err) {
    KILN_DISPATCH_INDEX(index.dtype(), "scatter_add", [&] {
      using index_t = scalar_t;
      dispatch_addable(self.dtype(), "scatter_add", [&](auto tag) {
        using T = decltype(tag);
        scatter_add_kernel<T, index_t><<<cuda::grid_for(total, kThreads), kThreads, 0, stream>>>(
            self.data<T>(), src.data<T>(), index.data<index_t>(), g, self.size(dim), total, err);
        KILN_CUDA_CHECK_LAUNCH();
      });
    });
  };
  launch_checking_indices("scatter_add", self.device(), dim, self.size(dim), launch);
}

}  // namespace

KILN_REGISTER_KERNEL(index_select_stub, CUDA, &index_select_cuda);
KILN_REGISTER_KERNEL(index_add_stub, CUDA, &index_add_cuda);
KILN_REGISTER_KERNEL(gather_stub, CUDA, &gather_cuda);
KILN_REGISTER_KERNEL(scatter_add_stub, CUDA, &scatter_add_cuda);

}  // namespace kiln
