// 2-D pooling kernels: max, average and adaptive average. The op (core/ops/pool.cpp) views a
// contiguous [N, C, H, W] input as N*C independent planes of H*W and computes the output size;
// the kernels loop over planes and windows.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/host_device.h"
#include "core/tensor.h"

namespace kiln {

// Window (oh, ow) covers rows [oh*stride_h - pad_h, +kernel_h) and likewise columns.
struct Pool2dGeometry {
  int64_t planes = 0, in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
};

// Window arithmetic shared by the CPU and CUDA kernels, along one dim.
struct PoolWindow {
  int64_t start, end;   // the input indices the window reads, clipped to [0, in)
  int64_t padded_size;  // its size clipped to the padded input: avg_pool2d's divisor with padding
};
KILN_HOST_DEVICE inline PoolWindow pool_window(int64_t o, int64_t stride, int64_t pad,
                                               int64_t kernel, int64_t in) {
  int64_t start = o * stride - pad;
  int64_t end = start + kernel < in + pad ? start + kernel : in + pad;
  const int64_t padded = end - start;
  start = start > 0 ? start : 0;
  end = end < in ? end : in;
  return {start, end, padded};
}
KILN_HOST_DEVICE inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) {
  return (o * in) / out;
}
KILN_HOST_DEVICE inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) {
  return ((o + 1) * in + out - 1) / out;
}

// The windows of the two averaging pools, so one CPU loop and one CUDA kernel serve both:
// output (oh, ow) sums the input rows row(oh) by the columns col(ow) and divides by the
// product of their counts.
struct AvgSpan {
  int64_t start, end;  // the input indices read
  int64_t count;       // this dim's factor of the divisor
};

// avg_pool2d: counts include the padding when count_include_pad.
struct AvgPoolWindows {
  Pool2dGeometry g;
  bool count_include_pad;
  KILN_HOST_DEVICE AvgSpan row(int64_t oh) const {
    return span(pool_window(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h));
  }
  KILN_HOST_DEVICE AvgSpan col(int64_t ow) const {
    return span(pool_window(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w));
  }
  KILN_HOST_DEVICE AvgSpan span(const PoolWindow& w) const {
    return {w.start, w.end, count_include_pad ? w.padded_size : w.end - w.start};
  }
};

// adaptive_avg_pool2d: see adaptive_start and adaptive_end.
struct AdaptiveAvgWindows {
  Pool2dGeometry g;
  KILN_HOST_DEVICE AvgSpan row(int64_t oh) const { return span(oh, g.in_h, g.out_h); }
  KILN_HOST_DEVICE AvgSpan col(int64_t ow) const { return span(ow, g.in_w, g.out_w); }
  KILN_HOST_DEVICE static AvgSpan span(int64_t o, int64_t in, int64_t out) {
    const int64_t start = adaptive_start(o, in, out), end = adaptive_end(o, in, out);
    return {start, end, end - start};
  }
};

// out [planes, OH, OW] and indices (i64, the argmax as h*W + w within its plane). NaN wins
// over numbers, and among equal values the first in row-major order wins, as in PyTorch.
extern DispatchStub<void(Tensor& out, Tensor& indices, const Tensor& input, const Pool2dGeometry& g)>
    max_pool2d_stub;
// grad_input [planes, H, W] (overwritten): each output's gradient goes to its argmax.
extern DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Tensor& indices,
                         const Pool2dGeometry& g)>
    max_pool2d_backward_stub;

// PyTorch's divisor: the window clipped to the padded input when count_include_pad, else
// clipped to the input itself.
extern DispatchStub<void(Tensor& out, const Tensor& input, const Pool2dGeometry& g,
                         bool count_include_pad)>
    avg_pool2d_stub;
extern DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g,
                         bool count_include_pad)>
    avg_pool2d_backward_stub;

// Cell (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH)) and the same for columns;
// stride, kernel and padding of the geometry are unused.
extern DispatchStub<void(Tensor& out, const Tensor& input, const Pool2dGeometry& g)>
    adaptive_avg_pool2d_stub;
extern DispatchStub<void(Tensor& grad_input, const Tensor& grad_out, const Pool2dGeometry& g)>
    adaptive_avg_pool2d_backward_stub;

}  // namespace kiln
