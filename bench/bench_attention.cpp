// scaled_dot_product_attention benchmarks: forward and forward+backward of each backend, at
// GPT-2 small's shapes on CUDA (H=12, T=1024, D=64, causal; B=16 by default, the first arg)
// and at a small shape on the CPU (where flash runs its plain C++ tiling).
//
//   build/bench/bench_attention --benchmark_filter=Cuda
//   python3 bench/torch_sdpa.py     # PyTorch 2.x F.scaled_dot_product_attention, same shapes
//
// GPU times come from CUDA events on kiln's stream around one call (forward) or one call and
// its backward. TFLOPS counts the two GEMM-shaped products per head, 4*B*H*T*T*D for the
// forward, halved for causal masking (the FlashAttention papers' convention), and 2.5 times
// that for the backward, so the forward+backward count is 3.5 times the forward's.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "core/autograd.h"
#include "core/device.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace {

using kiln::AttentionBackend;
using kiln::DType;
using kiln::Tensor;

constexpr double kTera = 1e12;

double attention_flops(int64_t B, int64_t H, int64_t T, int64_t D, bool causal, bool backward) {
  double f = 4.0 * static_cast<double>(B * H) * static_cast<double>(T) * static_cast<double>(T) *
             static_cast<double>(D);
  if (causal) f /= 2;
  return backward ? 3.5 * f : f;
}

struct Qkv {
  Tensor q, k, v, g;
};

Qkv make_qkv(int64_t B, int64_t H, int64_t T, int64_t D, kiln::TensorOptions opts, bool grad) {
  kiln::Generator gen(0);
  auto draw = [&] { return kiln::randn({B, H, T, D}, {.dtype = opts.dtype, .device = opts.device}, &gen); };
  Qkv x{draw(), draw(), draw(), draw()};
  if (grad) {
    x.q.requires_grad_();
    x.k.requires_grad_();
    x.v.requires_grad_();
  }
  return x;
}

// One step: the forward, and with `backward` its backward (gradients freed first, so each
// step writes them afresh rather than accumulating).
void step(Qkv& x, AttentionBackend backend, bool backward) {
  if (!backward) {
    kiln::NoGradGuard no_grad;
    benchmark::DoNotOptimize(kiln::scaled_dot_product_attention(x.q, x.k, x.v, true, backend).data_ptr());
    return;
  }
  for (Tensor* t : {&x.q, &x.k, &x.v}) t->set_grad(Tensor());
  kiln::scaled_dot_product_attention(x.q, x.k, x.v, true, backend).backward(x.g);
}

// ================================================================ CPU
void BM_AttentionCpu(benchmark::State& state, AttentionBackend backend, bool backward) {
  const int64_t B = 1, H = 4, T = state.range(0), D = 64;
  Qkv x = make_qkv(B, H, T, D, {}, backward);
  for (auto _ : state) step(x, backend, backward);
  state.counters["GFLOPS"] = benchmark::Counter(attention_flops(B, H, T, D, true, backward) / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK_CAPTURE(BM_AttentionCpu, naive_fwd, AttentionBackend::naive, false)->Arg(256)->Arg(1024)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_AttentionCpu, flash_fwd, AttentionBackend::flash, false)->Arg(256)->Arg(1024)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_AttentionCpu, naive_fwd_bwd, AttentionBackend::naive, true)->Arg(256)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_AttentionCpu, flash_fwd_bwd, AttentionBackend::flash, true)->Arg(256)->UseRealTime()->Unit(benchmark::kMillisecond);

// ================================================================ CUDA
#ifdef KILN_WITH_CUDA

const kiln::Device kCuda{kiln::DeviceType::CUDA, 0};

void BM_AttentionCuda(benchmark::State& state, AttentionBackend backend, DType dtype, bool backward) {
  if (kiln::cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t B = state.range(0), H = 12, T = 1024, D = 64;
  Qkv x = make_qkv(B, H, T, D, {.dtype = dtype, .device = kCuda}, backward);
  cudaStream_t stream = kiln::cuda::current_stream();
  step(x, backend, backward);  // warm-up: allocator, cuBLAS handles, module loading
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  KILN_CUDA_CHECK(cudaEventCreate(&start));
  KILN_CUDA_CHECK(cudaEventCreate(&stop));
  double total = 0;
  for (auto _ : state) {
    KILN_CUDA_CHECK(cudaEventRecord(start, stream));
    step(x, backend, backward);
    KILN_CUDA_CHECK(cudaEventRecord(stop, stream));
    KILN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms * 1e-3);
    total += ms * 1e-3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (total > 0)
    state.counters["TFLOPS"] = attention_flops(B, H, T, D, true, backward) *
                               static_cast<double>(state.iterations()) / total / kTera;
}

#define KILN_ATTENTION_BENCH(name, backend, dtype, backward)                                   \
  BENCHMARK_CAPTURE(BM_AttentionCuda, name, AttentionBackend::backend, DType::dtype, backward) \
      ->Arg(16)                                                                                \
      ->UseManualTime()                                                                        \
      ->Unit(benchmark::kMillisecond)

KILN_ATTENTION_BENCH(flash_bf16_fwd, flash, bf16, false);
KILN_ATTENTION_BENCH(flash_bf16_fwd_bwd, flash, bf16, true);
KILN_ATTENTION_BENCH(batched_bf16_fwd, batched, bf16, false);
KILN_ATTENTION_BENCH(batched_bf16_fwd_bwd, batched, bf16, true);
KILN_ATTENTION_BENCH(naive_bf16_fwd, naive, bf16, false);
KILN_ATTENTION_BENCH(naive_bf16_fwd_bwd, naive, bf16, true);
KILN_ATTENTION_BENCH(flash_f32_fwd, flash, f32, false);
KILN_ATTENTION_BENCH(flash_f32_fwd_bwd, flash, f32, true);

#endif  // KILN_WITH_CUDA

}  // namespace

BENCHMARK_MAIN();
