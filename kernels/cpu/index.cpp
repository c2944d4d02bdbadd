// CPU indexing kernels. Every index is checked before anything is written, so a bad index
// leaves the output untouched and the error names the index and the size it missed.
// The accumulating kernels give each output element to exactly one thread and add in index
// order, so results are deterministic.
#include "core/dispatch/index.h"

#include <algorithm>
#include <cstring>

#include "kernels/index_common.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 15;

template <class I>
void check_bounds(const char* op, const I* idx, int64_t n, int64_t dim, int64_t size) {
  for (int64_t i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= size) fail_index_out_of_range(op, idx[i], dim, size);
}

template <class T>
T add_in_opmath(T a, T b) {
  return static_cast<T>(static_cast<opmath_t<T>>(a) + static_cast<opmath_t<T>>(b));
}

// Offset of line `l` (a position in every dim but `dim` of `sizes`, row-major) in a tensor
// with `strides`.
int64_t line_offset(int64_t l, const Shape& sizes, int64_t dim, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    if (d == dim) continue;
    off += (l % sizes[d]) * strides[d];
    l /= sizes[d];
  }
  return off;
}

// ---------------------------------------------------------------- index_select
// Rows of `inner` elements are copied whole, so one loop serves every dtype.
template <class I>
void index_select_rows(char* out, const char* in, const I* idx, const DimSplit& s, int64_t n,
                       int64_t row_bytes) {
#pragma omp parallel for if (s.outer * n * row_bytes > kParallelGrain)
  for (int64_t j = 0; j < s.outer * n; ++j) {
    const int64_t o = j / n, i = j % n;
    std::memcpy(out + j * row_bytes, in + (o * s.size + idx[i]) * row_bytes, row_bytes);
  }
}

void index_select_cpu(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index) {
  const DimSplit s = split_at(in.shape(), dim);
  const int64_t n = index.numel();
  KILN_DISPATCH_INDEX(index.dtype(), "index_select", [&] {
    const scalar_t* idx = index.data<scalar_t>();
    check_bounds("index_select", idx, n, dim, s.size);
    index_select_rows(static_cast<char*>(out.data_ptr()), static_cast<const char*>(in.data_ptr()),
                      idx, s, n, s.inner * static_cast<int64_t>(in.element_size()));
  });
}

// ---------------------------------------------------------------- index_add
template <class T, class I>
void index_add_loop(T* self, const T* src, const I* idx, const DimSplit& s, int64_t n) {
  // Threads split the (outer, inner-block) columns; each adds its column in index order.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (s.inner + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) if (s.outer * n * s.inner > kParallelGrain)
  for (int64_t o = 0; o < s.outer; ++o) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlock, r1 = std::min(s.inner, r0 + kBlock);
      for (int64_t i = 0; i < n; ++i) {
        T* dst = self + (o * s.size + idx[i]) * s.inner;
        const T* from = src + (o * n + i) * s.inner;
        for (int64_t r = r0; r < r1; ++r) dst[r] = add_in_opmath(dst[r], from[r]);
      }
    }
  }
}

void index_add_cpu(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  const DimSplit s = split_at(self.shape(), dim);
  const int64_t n = index.numel();
  KILN_DISPATCH_INDEX(index.dtype(), "index_add", [&] {
    using index_t = scalar_t;
    const index_t* idx = index.data<index_t>();
    check_bounds("index_add", idx, n, dim, s.size);
    dispatch_addable(self.dtype(), "index_add", [&](auto tag) {
      using T = decltype(tag);
      index_add_loop(self.data<T>(), src.data<T>(), idx, s, n);
    });
  });
}

// ---------------------------------------------------------------- gather
// Walks index line by line along `dim`; out has index's shape and strides.
template <class T, class I>
void gather_loop(T* out, const T* in, const I* idx, const Shape& sizes, int64_t dim,
                 const Shape& index_strides, const Shape& in_strides) {
  const int64_t len = sizes[dim];
  if (len == 0) return;
  const int64_t lines = shape_numel(sizes) / len;
  const int64_t is = index_strides[dim], ins = in_strides[dim];
#pragma omp parallel for if (lines * len > kParallelGrain)
  for (int64_t l = 0; l < lines; ++l) {
    const int64_t io = line_offset(l, sizes, dim, index_strides);
    const int64_t xo = line_offset(l, sizes, dim, in_strides);
    for (int64_t k = 0; k < len; ++k) out[io + k * is] = in[xo + idx[io + k * is] * ins];
  }
}

void gather_cpu(Tensor& out, const Tensor& in, int64_t dim, const Tensor& index) {
  const Shape index_strides = contiguous_strides(index.shape());
  const Shape in_strides = contiguous_strides(in.shape());
  KILN_DISPATCH_INDEX(index.dtype(), "gather", [&] {
    using index_t = scalar_t;
    const index_t* idx = index.data<index_t>();
    check_bounds("gather", idx, index.numel(), dim, in.size(dim));
    KILN_DISPATCH_ALL(in.dtype(), "gather", [&] {
      gather_loop(out.data<scalar_t>(), in.data<scalar_t>(), idx, index.shape(), dim, index_strides,
                  in_strides);
    });
  });
}

// ---------------------------------------------------------------- scatter_add
// Lines along `dim` write disjoint parts of self (they differ in some other coordinate), so
// they run in parallel; within a line, adds go in index order.
template <class T, class I>
void scatter_add_loop(T* self, const T* src, const I* idx, const Shape& sizes, int64_t dim,
                      const Shape& index_strides, const Shape& src_strides,
                      const Shape& self_strides) {
  const int64_t len = sizes[dim];
  if (len == 0) return;
  const int64_t lines = shape_numel(sizes) / len;
  const int64_t is = index_strides[dim], ss = src_strides[dim], ds = self_strides[dim];
#pragma omp parallel for if (lines * len > kParallelGrain)
  for (int64_t l = 0; l < lines; ++l) {
    const int64_t io = line_offset(l, sizes, dim, index_strides);
    const int64_t so = line_offset(l, sizes, dim, src_strides);
    const int64_t d0 = line_offset(l, sizes, dim, self_strides);
    for (int64_t k = 0; k < len; ++k) {
      T& dst = self[d0 + idx[io + k * is] * ds];
      dst = add_in_opmath(dst, src[so + k * ss]);
    }
  }
}

void scatter_add_cpu(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src) {
  const Shape index_strides = contiguous_strides(index.shape());
  const Shape src_strides = contiguous_strides(src.shape());
  const Shape self_strides = contiguous_strides(self.shape());
  KILN_DISPATCH_INDEX(index.dtype(), "scatter_add", [&] {
    using index_t = scalar_t;
    const index_t* idx = index.data<index_t>();
    check_bounds("scatter_add", idx, index.numel(), dim, self.size(dim));
    dispatch_addable(self.dtype(), "scatter_add", [&](auto tag) {
      using T = decltype(tag);
      scatter_add_loop(self.data<T>(), src.data<T>(), idx, index.shape(), dim, index_strides,
                       src_strides, self_strides);
    });
  });
}

}  // namespace

KILN_REGISTER_KERNEL(index_select_stub, CPU, &index_select_cpu);
KILN_REGISTER_KERNEL(index_add_stub, CPU, &index_add_cpu);
KILN_REGISTER_KERNEL(gather_stub, CPU, &gather_cpu);
KILN_REGISTER_KERNEL(scatter_add_stub, CPU, &scatter_add_cpu);

}  // namespace kiln
