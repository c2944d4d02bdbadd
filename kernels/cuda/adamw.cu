// CUDA fused Adam/AdamW update (core/dispatch/optim.h) as a multi-tensor apply, after
// PyTorch's multi_tensor_apply and llm.c's adamw: every tensor of the list is cut into chunks
// of kChunk elements, one block per chunk, and one launch carries the pointers of up to
// kMaxTensors tensors and up to kMaxBlocks chunks in its argument struct (under the 4 KiB
// kernel-parameter limit). A model with hundreds of small parameters therefore updates in a
// handful of launches instead of one per tensor. Within a chunk, threads move 16 bytes of
// each operand per access (4 floats, 2 doubles) when all four of the tensor's pointers are
// 16-byte aligned (the caching allocator's blocks are), one element at a time otherwise.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/cuda_context.h"
#include "core/dispatch/optim.h"

namespace kiln {
namespace {

constexpr int kThreads = 512;
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 65536;  // elements; a multiple of every vector width, so chunks
                                   // keep their tensor's alignment

template <class T>
struct AdamTensorList {
  T* param[kMaxTensors];
  const T* grad[kMaxTensors];
  T* exp_avg[kMaxTensors];
  T* exp_avg_sq[kMaxTensors];
  int64_t numel[kMaxTensors];
  uint8_t block_tensor[kMaxBlocks];  // slot of the tensor that block b works on
  int32_t block_chunk[kMaxBlocks];   // and which of its chunks
};
static_assert(sizeof(AdamTensorList<double>) + sizeof(AdamConstants<double>) < 4000,
              "kernel arguments must stay under CUDA's 4 KiB limit");
static_assert(kMaxTensors <= 255, "block_tensor is a uint8_t");

template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <class T>
__global__ void __launch_bounds__(kThreads)
    adam_multi_tensor_kernel(AdamTensorList<T> list, AdamConstants<T> c) {
  constexpr int kVec = 16 / sizeof(T);
  const int t = list.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(list.block_chunk[blockIdx.x]) * kChunk;
  const int64_t left = list.numel[t] - begin;
  const int64_t n = left < kChunk ? left : kChunk;
  T* __restrict__ p = list.param[t] + begin;
  const T* __restrict__ g = list.grad[t] + begin;
  T* __restrict__ m = list.exp_avg[t] + begin;
  T* __restrict__ v = list.exp_avg_sq[t] + begin;

  // The same for every thread of the block: no divergence.
  const bool aligned = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) |
                         reinterpret_cast<uintptr_t>(m) | reinterpret_cast<uintptr_t>(v)) %
                        16) == 0;
  int64_t done = 0;
  if (aligned) {
    const int64_t nvec = n / kVec;
    for (int64_t k = threadIdx.x; k < nvec; k += blockDim.x) {
      Vec<T, kVec> pv = reinterpret_cast<const Vec<T, kVec>*>(p)[k];
      const Vec<T, kVec> gv = reinterpret_cast<const Vec<T, kVec>*>(g)[k];
      Vec<T, kVec> mv = reinterpret_cast<const Vec<T, kVec>*>(m)[k];
      Vec<T, kVec> vv = reinterpret_cast<const Vec<T, kVec>*>(v)[k];
#pragma unroll
      for (int j = 0; j < kVec; ++j) adam_update_element(pv.v[j], gv.v[j], mv.v[j], vv.v[j], c);
      reinterpret_cast<Vec<T, kVec>*>(p)[k] = pv;
      reinterpret_cast<Vec<T, kVec>*>(m)[k] = mv;
      reinterpret_cast<Vec<T, kVec>*>(v)[k] = vv;
    }
    done = nvec * kVec;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    T pi = p[i], mi = m[i], vi = v[i];
    adam_update_element(pi, g[i], mi, vi, c);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

// Packs the tensors into as few launches as the limits allow. A tensor whose chunks do not
// all fit in one launch continues in the next, in slot 0.
template <class T>
void launch_adam(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs,
                 const AdamConstants<T>& c, cudaStream_t stream) {
  AdamTensorList<T> list{};
  int tensors = 0, blocks = 0;
  auto launch = [&] {
    adam_multi_tensor_kernel<T><<<blocks, kThreads, 0, stream>>>(list, c);
    KILN_CUDA_CHECK_LAUNCH();
    tensors = 0;
    blocks = 0;
  };
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].numel();
    if (n == 0) continue;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    int slot = -1;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      if (slot < 0) {
        if (tensors == kMaxTensors) launch();
        slot = tensors++;
        list.param[slot] = params[i].data<T>();
        list.grad[slot] = grads[i].data<T>();
        list.exp_avg[slot] = exp_avgs[i].data<T>();
        list.exp_avg_sq[slot] = exp_avg_sqs[i].data<T>();
        list.numel[slot] = n;
      }
      list.block_tensor[blocks] = static_cast<uint8_t>(slot);
      list.block_chunk[blocks] = static_cast<int32_t>(chunk);
      if (++blocks == kMaxBlocks) {
        launch();
        slot = -1;
      }
    }
  }
  if (blocks > 0) launch();
}

void adamw_cuda(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step,
                bool decoupled) {
  if (params.empty()) return;
  cuda::DeviceGuard guard(params[0].device().index);
  cudaStream_t stream = cuda::current_stream();
  switch (params[0].dtype()) {
    case DType::f32:
      launch_adam(params, grads, exp_avgs, exp_avg_sqs,
                  adam_constants<float>(lr, beta1, beta2, eps, weight_decay, step, decoupled),
                  stream);
      break;
    case DType::f64:
      launch_adam(params, grads, exp_avgs, exp_avg_sqs,
                  adam_constants<double>(lr, beta1, beta2, eps, weight_decay, step, decoupled),
                  stream);
      break;
    default:
      KILN_FAIL("adamw kernel: parameters must be f32 or f64, got ", params[0].meta_str());
  }
}

}  // namespace

KILN_REGISTER_KERNEL(adamw_stub, CUDA, &adamw_cuda);

}  // namespace kiln
