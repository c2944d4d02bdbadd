// CPU conv2d (core/dispatch/conv.h) as im2col + GEMM, per group:
//   forward      out_g  [Og, L]  = W_g [Og, K] @ col_g [K, L]
//   input grad   dcol_g [K, L]   = W_g^T @ dout_g, then col2im sums dcol back into dx
//   weight grad  dW_g   [Og, K] += dout_g @ col_g^T
// with K = C/groups * kH * kW and L = OH * OW. Samples are processed in chunks whose columns
// sit side by side ([K, chunk * L]), so each GEMM is one large OpenBLAS call (threaded by
// OpenBLAS itself), while im2col, col2im and the copies in and out of the column layout run
// on an OpenMP team over (sample, channel). Calling BLAS from inside an OpenMP team would
// oversubscribe the cores (see kernels/cpu/matmul.cpp). Every sum has a fixed order, so
// results are deterministic. f16/bf16 are converted to f32 and back.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

#include "core/dispatch/conv.h"

namespace kiln {
namespace {

// Column buffers hold at most this many elements (plus one for a single huge sample).
constexpr int64_t kColumnBudget = int64_t{1} << 23;

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
              1.0f, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
              1.0, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

// Scratch space, left uninitialised: every element is written before it is read.
template <class T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<size_t>(n)]);
}

// The sizes one group's GEMMs work on, and how many samples go in one chunk.
struct ConvPlan {
  int64_t K, L, Cg, Og, chunk;
  explicit ConvPlan(const Conv2dGeometry& g)
      : K(g.in_per_group() * g.kernel_h * g.kernel_w),
        L(g.out_h * g.out_w),
        Cg(g.in_per_group()),
        Og(g.out_per_group()),
        chunk(std::clamp<int64_t>(kColumnBudget / std::max<int64_t>(1, K * L), 1, g.batch)) {
    KILN_CHECK(K <= INT_MAX && chunk * L <= INT_MAX && Og <= INT_MAX,
               "conv2d: a GEMM of [", Og, " x ", K, "] @ [", K, " x ", chunk * L,
               "] is too large for BLAS (sizes must fit in int)");
  }
};

// col[(c*kH + i)*kW + j][s*L + oh*OW + ow] = x[c][oh*sH - pH + i*dH][ow*sW - pW + j*dW] (0 when
// outside), for channel c of group `grp` of sample s of the chunk starting at n0.
template <class T>
void im2col(const T* x, T* col, const Conv2dGeometry& g, const ConvPlan& p, int64_t n0,
            int64_t count, int64_t grp) {
  const int64_t ld = count * p.L, H = g.in_h, W = g.in_w;
#pragma omp parallel for collapse(2) if (count * p.K * p.L > (1 << 15))
  for (int64_t s = 0; s < count; ++s) {
    for (int64_t c = 0; c < p.Cg; ++c) {
      const T* plane = x + ((n0 + s) * g.in_channels + grp * p.Cg + c) * H * W;
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          T* dst = col + ((c * g.kernel_h + i) * g.kernel_w + j) * ld + s * p.L;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            T* row = dst + oh * g.out_w;
            if (ih < 0 || ih >= H) {
              std::fill(row, row + g.out_w, T(0));
              continue;
            }
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
              row[ow] = iw >= 0 && iw < W ? plane[ih * W + iw] : T(0);
            }
          }
        }
      }
    }
  }
}

// The inverse scatter of im2col, summed: dx[c][ih][iw] += dcol[...]. One (sample, channel)
// plane per iteration, so no two iterations write the same element.
template <class T>
void col2im(const T* dcol, T* dx, const Conv2dGeometry& g, const ConvPlan& p, int64_t n0,
            int64_t count, int64_t grp) {
  const int64_t ld = count * p.L, H = g.in_h, W = g.in_w;
#pragma omp parallel for collapse(2) if (count * p.K * p.L > (1 << 15))
  for (int64_t s = 0; s < count; ++s) {
    for (int64_t c = 0; c < p.Cg; ++c) {
      T* plane = dx + ((n0 + s) * g.in_channels + grp * p.Cg + c) * H * W;
      std::fill(plane, plane + H * W, T(0));
      for (int64_t i = 0; i < g.kernel_h; ++i) {
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const T* src = dcol + ((c * g.kernel_h + i) * g.kernel_w + j) * ld + s * p.L;
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= H) continue;
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const int64_t iw = ow * g.stride_w - g.pad_w + j * g.dilation_w;
              if (iw >= 0 && iw < W) plane[ih * W + iw] += src[oh * g.out_w + ow];
            }
          }
        }
      }
    }
  }
}

// dst[o][s*L + l] = y[n0 + s][grp*Og + o][l]: one group's output channels of a chunk, side by side.
template <class T>
void gather_output_grad(const T* y, T* dst, const Conv2dGeometry& g, const ConvPlan& p, int64_t n0,
                        int64_t count, int64_t grp) {
  const int64_t ld = count * p.L;
#pragma omp parallel for collapse(2) if (count * p.Og * p.L > (1 << 15))
  for (int64_t s = 0; s < count; ++s)
    for (int64_t o = 0; o < p.Og; ++o)
      std::memcpy(dst + o * ld + s * p.L, y + ((n0 + s) * g.out_channels + grp * p.Og + o) * p.L,
                  p.L * sizeof(T));
}

template <class T>
void conv2d_forward_typed(T* y, const T* x, const T* w, const T* bias, const Conv2dGeometry& g) {
  const ConvPlan p(g);
  auto col = scratch<T>(p.K * p.chunk * p.L), prod = scratch<T>(p.Og * p.chunk * p.L);
  for (int64_t n0 = 0; n0 < g.batch; n0 += p.chunk) {
    const int64_t count = std::min(p.chunk, g.batch - n0), ld = count * p.L;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x, col.get(), g, p, n0, count, grp);
      gemm(CblasNoTrans, CblasNoTrans, p.Og, ld, p.K, w + grp * p.Og * p.K, p.K, col.get(), ld, T(0),
           prod.get(), ld);
      // Back to NCHW, adding the bias on the way.
#pragma omp parallel for collapse(2) if (count * p.Og * p.L > (1 << 15))
      for (int64_t s = 0; s < count; ++s) {
        for (int64_t o = 0; o < p.Og; ++o) {
          const int64_t oc = grp * p.Og + o;
          const T b = bias ? bias[oc] : T(0);
          const T* src = prod.get() + o * ld + s * p.L;
          T* dst = y + ((n0 + s) * g.out_channels + oc) * p.L;
          for (int64_t l = 0; l < p.L; ++l) dst[l] = src[l] + b;
        }
      }
    }
  }
}

template <class T>
void conv2d_backward_input_typed(T* dx, const T* dy, const T* w, const Conv2dGeometry& g) {
  const ConvPlan p(g);
  auto dcol = scratch<T>(p.K * p.chunk * p.L), dprod = scratch<T>(p.Og * p.chunk * p.L);
  for (int64_t n0 = 0; n0 < g.batch; n0 += p.chunk) {
    const int64_t count = std::min(p.chunk, g.batch - n0), ld = count * p.L;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      gather_output_grad(dy, dprod.get(), g, p, n0, count, grp);
      gemm(CblasTrans, CblasNoTrans, p.K, ld, p.Og, w + grp * p.Og * p.K, p.K, dprod.get(), ld, T(0),
           dcol.get(), ld);
      col2im(dcol.get(), dx, g, p, n0, count, grp);
    }
  }
}

template <class T>
void conv2d_backward_weight_typed(T* dw, const T* dy, const T* x, const Conv2dGeometry& g) {
  const ConvPlan p(g);
  auto col = scratch<T>(p.K * p.chunk * p.L), dprod = scratch<T>(p.Og * p.chunk * p.L);
  for (int64_t n0 = 0; n0 < g.batch; n0 += p.chunk) {
    const int64_t count = std::min(p.chunk, g.batch - n0), ld = count * p.L;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x, col.get(), g, p, n0, count, grp);
      gather_output_grad(dy, dprod.get(), g, p, n0, count, grp);
      // The first chunk writes, later chunks accumulate.
      gemm(CblasNoTrans, CblasTrans, p.Og, p.K, ld, dprod.get(), ld, col.get(), ld,
           n0 == 0 ? T(0) : T(1), dw + grp * p.Og * p.K, p.K);
    }
  }
}

// 16-bit floats compute in f32: `compute` fills an f32 output (from to_f32 inputs), which is
// then rounded once into `out`.
bool is_16bit(DType t) { return t == DType::f16 || t == DType::bf16; }
Tensor to_f32(const Tensor& t) { return t.defined() ? t.to(DType::f32) : t; }

template <class F>
void via_f32(Tensor& out, F&& compute) {
  Tensor out32 = Tensor::empty(out.shape(), {.dtype = DType::f32});
  compute(out32);
  out.copy_(out32);
}

// f(float{}) or f(double{}), the types the gemm-based kernels run in.
template <class F>
void with_f32_or_f64(DType dtype, const char* what, F&& f) {
  KILN_DISPATCH_FLOATING(dtype, what, [&] {
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) f(scalar_t{});
  });
}

void check_kernel_args(const char* what, std::initializer_list<const Tensor*> ts) {
  const DType dtype = (*ts.begin())->dtype();
  for (const Tensor* t : ts)
    if (t->defined())
      KILN_CHECK(t->is_contiguous() && t->dtype() == dtype, what, ": expected contiguous ", dtype,
                 " tensors, got ", t->meta_str());
}

void conv2d_cpu(Tensor& out, const Tensor& input, const Tensor& weight, const Tensor& bias,
                const Conv2dGeometry& g) {
  check_kernel_args("conv2d kernel", {&out, &input, &weight, &bias});
  if (is_16bit(out.dtype())) {
    return via_f32(out, [&](Tensor& out32) {
      conv2d_cpu(out32, to_f32(input), to_f32(weight), to_f32(bias), g);
    });
  }
  with_f32_or_f64(out.dtype(), "conv2d", [&](auto tag) {
    using T = decltype(tag);
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    conv2d_forward_typed(out.data<T>(), input.data<T>(), weight.data<T>(), b, g);
  });
}

void conv2d_backward_input_cpu(Tensor& grad_input, const Tensor& grad_out, const Tensor& weight,
                               const Conv2dGeometry& g) {
  check_kernel_args("conv2d backward kernel", {&grad_input, &grad_out, &weight});
  if (is_16bit(grad_input.dtype())) {
    return via_f32(grad_input, [&](Tensor& dx32) {
      conv2d_backward_input_cpu(dx32, to_f32(grad_out), to_f32(weight), g);
    });
  }
  with_f32_or_f64(grad_input.dtype(), "conv2d backward", [&](auto tag) {
    using T = decltype(tag);
    conv2d_backward_input_typed(grad_input.data<T>(), grad_out.data<T>(), weight.data<T>(), g);
  });
}

void conv2d_backward_weight_cpu(Tensor& grad_weight, const Tensor& grad_out, const Tensor& input,
                                const Conv2dGeometry& g) {
  check_kernel_args("conv2d backward kernel", {&grad_weight, &grad_out, &input});
  if (is_16bit(grad_weight.dtype())) {
    return via_f32(grad_weight, [&](Tensor& dw32) {
      conv2d_backward_weight_cpu(dw32, to_f32(grad_out), to_f32(input), g);
    });
  }
  with_f32_or_f64(grad_weight.dtype(), "conv2d backward", [&](auto tag) {
    using T = decltype(tag);
    conv2d_backward_weight_typed(grad_weight.data<T>(), grad_out.data<T>(), input.data<T>(), g);
  });
}

}  // namespace

KILN_REGISTER_KERNEL(conv2d_stub, CPU, &conv2d_cpu);
KILN_REGISTER_KERNEL(conv2d_backward_input_stub, CPU, &conv2d_backward_input_cpu);
KILN_REGISTER_KERNEL(conv2d_backward_weight_stub, CPU, &conv2d_backward_weight_cpu);

}  // namespace kiln
