// CUDA conv2d (core/dispatch/conv.h) on cuDNN's legacy convolution API: one cuDNN handle per
// device bound to kiln's stream, descriptors per call, and an algorithm per problem chosen
// once from cudnnGet*Algorithm_v7's heuristic ranking: the first (fastest expected) that
// succeeds and is deterministic, so training runs are reproducible. The workspace comes from
// kiln's caching allocator.
//
// f32 runs with CUDNN_FMA_MATH: CUDNN_DEFAULT_MATH still lets Ampere and later GPUs use TF32
// tensor cores for f32, which would put ~1e-3 relative error into every convolution.
// cuda::set_allow_tf32(true) (kernels/cuda/blas_handle.h) turns TF32 on here as for GEMMs.
// f16/bf16 use tensor cores and accumulate in f32; f64 computes in f64.
//
// Built only with cuDNN (KILN_WITH_CUDNN); without it no CUDA conv kernel registers and
// core/ops/conv.cpp says why.
#ifdef KILN_WITH_CUDNN

#include <cudnn.h>

#include <algorithm>
#include <array>
#include <climits>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "core/cuda_context.h"
#include "core/dispatch/conv.h"
#include "kernels/cuda/blas_handle.h"

namespace kiln {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kThreads = 256;

// The cuDNN handle of the current device, bound to current_stream(). Made on first use and
// never destroyed, like the cuBLAS handles (kernels/cuda/blas_handle.cu).
cudnnHandle_t cudnn_handle() {
  const int device = cuda::current_device();
  KILN_CHECK(device < kMaxDevices, "CUDA device index ", device, " too large");
  static cudnnHandle_t handles[kMaxDevices] = {};
  static std::once_flag once[kMaxDevices];
  std::call_once(once[device], [device] { KILN_CUDNN_CHECK(cudnnCreate(&handles[device])); });
  KILN_CUDNN_CHECK(cudnnSetStream(handles[device], cuda::current_stream()));
  return handles[device];
}

// ------------------------------------------------------------------ descriptors
// How one dtype is computed.
struct ConvMath {
  cudnnDataType_t data, compute;
  cudnnMathType_t math;
  bool strict_f32;  // f32 without TF32: algorithms that need tensor-op math are skipped
};

ConvMath conv_math(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return cuda::allow_tf32() ? ConvMath{CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, false}
                                : ConvMath{CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, true};
    case DType::f64: return {CUDNN_DATA_DOUBLE, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH, false};
    case DType::f16: return {CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, false};
    case DType::bf16: return {CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, false};
    default: KILN_FAIL("conv2d on CUDA: unsupported dtype ", dtype);
  }
}

// A cuDNN descriptor, destroyed with its owner. Created empty so that a constructor that
// throws half way still destroys the ones it made.
template <class D, cudnnStatus_t (*Destroy)(D)>
class Descriptor {
 public:
  Descriptor() = default;
  ~Descriptor() {
    if (d_) Destroy(d_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  D* out() { return &d_; }
  D get() const { return d_; }

 private:
  D d_ = nullptr;
};

int to_int(int64_t v) { return static_cast<int>(v); }

// x [N, C, H, W], w [O, C/groups, kH, kW], y [N, O, OH, OW] and the convolution itself.
struct ConvDescriptors {
  Descriptor<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor> x, y;
  Descriptor<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor> w;
  Descriptor<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor> conv;

  ConvDescriptors(const Conv2dGeometry& g, const ConvMath& m) {
    KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(x.out()));
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x.get(), CUDNN_TENSOR_NCHW, m.data, to_int(g.batch),
                                                to_int(g.in_channels), to_int(g.in_h), to_int(g.in_w)));
    KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(y.out()));
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y.get(), CUDNN_TENSOR_NCHW, m.data, to_int(g.batch),
                                                to_int(g.out_channels), to_int(g.out_h), to_int(g.out_w)));
    KILN_CUDNN_CHECK(cudnnCreateFilterDescriptor(w.out()));
    KILN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w.get(), m.data, CUDNN_TENSOR_NCHW, to_int(g.out_channels),
                                                to_int(g.in_per_group()), to_int(g.kernel_h),
                                                to_int(g.kernel_w)));
    KILN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(conv.out()));
    KILN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv.get(), to_int(g.pad_h), to_int(g.pad_w),
                                                     to_int(g.stride_h), to_int(g.stride_w),
                                                     to_int(g.dilation_h), to_int(g.dilation_w),
                                                     CUDNN_CROSS_CORRELATION, m.compute));
    KILN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv.get(), to_int(g.groups)));
    KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv.get(), m.math));
  }
};

// alpha = 1 and beta = 0, in the type cuDNN reads them as: double for f64 data, else float.
struct Scale {
  explicit Scale(DType dtype) : is_double(dtype == DType::f64) {}
  const void* one() const { return is_double ? static_cast<const void*>(&d1) : &f1; }
  const void* zero() const { return is_double ? static_cast<const void*>(&d0) : &f0; }
  bool is_double;
  float f1 = 1.0f, f0 = 0.0f;
  double d1 = 1.0, d0 = 0.0;
};

// ------------------------------------------------------------------ algorithm choice
enum class Pass : int { forward, backward_input, backward_weight };

const char* pass_name(Pass p) {
  switch (p) {
    case Pass::forward: return "forward";
    case Pass::backward_input: return "backward (input)";
    case Pass::backward_weight: return "backward (weight)";
  }
  return "?";
}

struct AlgoChoice {
  int algo;
  cudnnMathType_t math;
};

std::string describe(const Conv2dGeometry& g, DType dtype) {
  return detail::str_cat(dtype, " input [", g.batch, ", ", g.in_channels, ", ", g.in_h, ", ", g.in_w,
                         "], weight [", g.out_channels, ", ", g.in_per_group(), ", ", g.kernel_h, ", ",
                         g.kernel_w, "], stride (", g.stride_h, ", ", g.stride_w, "), padding (", g.pad_h,
                         ", ", g.pad_w, "), dilation (", g.dilation_h, ", ", g.dilation_w, "), groups ",
                         g.groups);
}

// The first usable entry of a heuristic ranking (best first): it runs, it is deterministic,
// and it does not need tensor-op math when f32 must stay exact.
template <class Perf>
std::optional<AlgoChoice> first_usable(const std::vector<Perf>& perfs, int returned, bool strict_f32) {
  for (int i = 0; i < returned; ++i) {
    const Perf& p = perfs[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.determinism != CUDNN_DETERMINISTIC) continue;
    if (strict_f32 && (p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;
    return AlgoChoice{static_cast<int>(p.algo), p.mathType};
  }
  return std::nullopt;
}

// The choice for one problem, asked of cuDNN once per process: query(max, &returned, perfs)
// runs the heuristic. Afterwards the convolution descriptor carries the choice's math type.
template <class Perf, class Query>
AlgoChoice choose_algorithm(Pass pass, const Conv2dGeometry& g, DType dtype, const ConvMath& m,
                            cudnnConvolutionDescriptor_t conv, int max_count, Query&& query) {
  using Key = std::array<int64_t, 20>;
  const Key key = {static_cast<int64_t>(pass), static_cast<int64_t>(dtype), static_cast<int64_t>(m.math),
                   cuda::current_device(), g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels,
                   g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
                   g.dilation_w, g.groups, g.out_h, g.out_w};
  static std::mutex mu;
  static std::map<Key, AlgoChoice> cache;
  std::optional<AlgoChoice> choice;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) choice = it->second;
  }
  if (!choice) {
    std::vector<Perf> perfs(static_cast<size_t>(std::max(max_count, 1)));
    int returned = 0;
    query(static_cast<int>(perfs.size()), &returned, perfs.data());
    choice = first_usable(perfs, returned, m.strict_f32);
    KILN_CHECK(choice, "conv2d ", pass_name(pass), " on CUDA: cuDNN offers no deterministic algorithm",
               m.strict_f32 ? " without TF32" : "", " for ", describe(g, dtype));
    std::lock_guard<std::mutex> lock(mu);
    cache.emplace(key, *choice);
  }
  // Strict f32 keeps FMA math whatever the ranking reported; otherwise use the algorithm's own.
  if (!m.strict_f32) KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, choice->math));
  return *choice;
}

// Device scratch memory of `bytes` from the caching allocator (freed in stream order).
Tensor workspace(size_t bytes, Device device) {
  return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, {.dtype = DType::u8, .device = device});
}

// ------------------------------------------------------------------ bias
template <class T>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t channels,
                                int64_t plane, int64_t n) {
  using A = opmath_t<T>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[k] = static_cast<T>(static_cast<A>(y[k]) + static_cast<A>(bias[(k / plane) % channels]));
}

// ------------------------------------------------------------------ entry points
void check_args(const char* what, const Conv2dGeometry& g, std::initializer_list<const Tensor*> ts) {
  const Tensor& first = **ts.begin();
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    KILN_CHECK(t->is_cuda() && t->device() == first.device() && t->is_contiguous() &&
                   t->dtype() == first.dtype(),
               what, ": expected contiguous ", first.dtype(), " tensors on ", first.device(), ", got ",
               t->meta_str());
    // cuDNN's legacy API indexes with int.
    KILN_CHECK(t->numel() <= INT_MAX, what, ": ", t->meta_str(), " has 2^31 or more elements, more "
               "than cuDNN's legacy convolution API supports (", describe(g, first.dtype()), ")");
  }
}

void conv2d_cuda(Tensor& out, const Tensor& input, const Tensor& weight, const Tensor& bias,
                 const Conv2dGeometry& g) {
  check_args("conv2d kernel", g, {&out, &input, &weight, &bias});
  cuda::DeviceGuard guard(input.device().index);
  cudnnHandle_t handle = cudnn_handle();
  const ConvMath m = conv_math(input.dtype());
  ConvDescriptors d(g, m);
  int max_count = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
  const AlgoChoice c = choose_algorithm<cudnnConvolutionFwdAlgoPerf_t>(
      Pass::forward, g, input.dtype(), m, d.conv.get(), max_count, [&](int n, int* returned, auto* perfs) {
        KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x.get(), d.w.get(), d.conv.get(),
                                                                d.y.get(), n, returned, perfs));
      });
  const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(c.algo);
  size_t bytes = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle, d.x.get(), d.w.get(), d.conv.get(),
                                                           d.y.get(), algo, &bytes));
  Tensor ws = workspace(bytes, input.device());
  const Scale s(input.dtype());
  KILN_CUDNN_CHECK(cudnnConvolutionForward(handle, s.one(), d.x.get(), input.data_ptr(), d.w.get(),
                                           weight.data_ptr(), d.conv.get(), algo, ws.data_ptr(), bytes,
                                           s.zero(), d.y.get(), out.data_ptr()));
  if (bias.defined()) {
    const int64_t n = out.numel();
    KILN_DISPATCH_FLOATING(out.dtype(), "conv2d bias", [&] {
      add_bias_kernel<<<cuda::grid_for(n, kThreads), kThreads, 0, cuda::current_stream()>>>(
          out.data<scalar_t>(), bias.data<scalar_t>(), g.out_channels, g.out_h * g.out_w, n);
    });
    KILN_CUDA_CHECK_LAUNCH();
  }
}

void conv2d_backward_input_cuda(Tensor& grad_input, const Tensor& grad_out, const Tensor& weight,
                                const Conv2dGeometry& g) {
  check_args("conv2d backward kernel", g, {&grad_input, &grad_out, &weight});
  cuda::DeviceGuard guard(grad_out.device().index);
  cudnnHandle_t handle = cudnn_handle();
  const ConvMath m = conv_math(grad_out.dtype());
  ConvDescriptors d(g, m);
  int max_count = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
  const AlgoChoice c = choose_algorithm<cudnnConvolutionBwdDataAlgoPerf_t>(
      Pass::backward_input, g, grad_out.dtype(), m, d.conv.get(), max_count,
      [&](int n, int* returned, auto* perfs) {
        KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, d.w.get(), d.y.get(), d.conv.get(),
                                                                     d.x.get(), n, returned, perfs));
      });
  const auto algo = static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo);
  size_t bytes = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(handle, d.w.get(), d.y.get(), d.conv.get(),
                                                                d.x.get(), algo, &bytes));
  Tensor ws = workspace(bytes, grad_out.device());
  const Scale s(grad_out.dtype());
  KILN_CUDNN_CHECK(cudnnConvolutionBackwardData(handle, s.one(), d.w.get(), weight.data_ptr(), d.y.get(),
                                                grad_out.data_ptr(), d.conv.get(), algo, ws.data_ptr(), bytes,
                                                s.zero(), d.x.get(), grad_input.data_ptr()));
}

void conv2d_backward_weight_cuda(Tensor& grad_weight, const Tensor& grad_out, const Tensor& input,
                                 const Conv2dGeometry& g) {
  check_args("conv2d backward kernel", g, {&grad_weight, &grad_out, &input});
  cuda::DeviceGuard guard(grad_out.device().index);
  cudnnHandle_t handle = cudnn_handle();
  const ConvMath m = conv_math(grad_out.dtype());
  ConvDescriptors d(g, m);
  int max_count = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &max_count));
  const AlgoChoice c = choose_algorithm<cudnnConvolutionBwdFilterAlgoPerf_t>(
      Pass::backward_weight, g, grad_out.dtype(), m, d.conv.get(), max_count,
      [&](int n, int* returned, auto* perfs) {
        KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, d.x.get(), d.y.get(),
                                                                       d.conv.get(), d.w.get(), n, returned,
                                                                       perfs));
      });
  const auto algo = static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo);
  size_t bytes = 0;
  KILN_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, d.x.get(), d.y.get(), d.conv.get(),
                                                                  d.w.get(), algo, &bytes));
  Tensor ws = workspace(bytes, grad_out.device());
  const Scale s(grad_out.dtype());
  KILN_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, s.one(), d.x.get(), input.data_ptr(), d.y.get(),
                                                  grad_out.data_ptr(), d.conv.get(), algo, ws.data_ptr(), bytes,
                                                  s.zero(), d.w.get(), grad_weight.data_ptr()));
}

}  // namespace

KILN_REGISTER_KERNEL(conv2d_stub, CUDA, &conv2d_cuda);
KILN_REGISTER_KERNEL(conv2d_backward_input_stub, CUDA, &conv2d_backward_input_cuda);
KILN_REGISTER_KERNEL(conv2d_backward_weight_stub, CUDA, &conv2d_backward_weight_cuda);

}  // namespace kiln

#endif  // KILN_WITH_CUDNN
