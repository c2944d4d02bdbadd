// Op benchmarks: elementwise add, sums, softmax and matmul on the CPU, and on CUDA in f32 and
// bf16 next to the roofs that matter: a device-to-device copy of the same byte count for the
// memory-bound ops (counter frac_of_copy), raw cuBLAS at the same shapes for matmul
// (counters TFLOPS and cublas_TFLOPS). The GPT-2 step's memory-bound ops (layer norm, the
// fused residual + layer norm, GELU, the fused classifier, AdamW) run at GPT-2 124M shapes:
// B*T = 8192 rows of 768 channels, a vocabulary padded to 50304 with 50257 valid, 124M
// parameters. Their byte counts are the traffic the op cannot avoid (each input read once,
// each output written once), so frac_of_copy also says how far a kernel is from one pass.
//
//   build/bench/bench_ops --benchmark_filter=Cuda
//
// GPU timings come from CUDA events on kiln's stream, one op per iteration. Memory-bound
// ops (and their copy baseline) run after a 256 MiB memset that flushes L2 (50 MB on an H100),
// so small sizes measure DRAM rather than cache.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/device.h"
#include "core/dispatch/transformer.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "optim/fused_step.h"

#ifdef KILN_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace {

using kiln::DType;
using kiln::Tensor;

constexpr double kTera = 1e12;

// 2*M*N*K FLOPs per iteration, reported per second of (real or manual) time, in TFLOP/s.
benchmark::Counter tflops_counter(int64_t m, int64_t n, int64_t k) {
  return benchmark::Counter(2.0 * static_cast<double>(m) * static_cast<double>(n) *
                                static_cast<double>(k) / kTera,
                            benchmark::Counter::kIsIterationInvariantRate);
}

// ================================================================ CPU (always)
// Real time, not the main thread's CPU time: the kernels run on OpenMP threads.

void BM_AddCpu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = kiln::rand({n}), b = kiln::rand({n});
  for (auto _ : state) {
    Tensor c = kiln::add(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 3 * n * 4);
}
BENCHMARK(BM_AddCpu)->Arg(1 << 16)->Arg(1 << 20)->Arg(1 << 24)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_SumLastDimCpu(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = kiln::rand({rows, cols});
  for (auto _ : state) {
    Tensor s = kiln::sum(x, {1});
    benchmark::DoNotOptimize(s.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * (rows * cols + rows) * 4);
}
BENCHMARK(BM_SumLastDimCpu)->Args({4096, 4096})->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_SumAllCpu(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = kiln::rand({rows, cols});
  for (auto _ : state) {
    Tensor s = kiln::sum(x);
    benchmark::DoNotOptimize(s.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * rows * cols * 4);
}
BENCHMARK(BM_SumAllCpu)->Args({4096, 4096})->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_SoftmaxCpu(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = kiln::randn({rows, cols});
  for (auto _ : state) {
    Tensor y = kiln::softmax(x, 1);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 2 * rows * cols * 4);
}
BENCHMARK(BM_SoftmaxCpu)->Args({4096, 1024})->Args({1024, 50304})->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_MatmulCpu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const Tensor a = kiln::randn({n, n}), b = kiln::randn({n, n});
  for (auto _ : state) {
    Tensor c = kiln::matmul(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 3 * n * n * 4);
  state.counters["TFLOPS"] = tflops_counter(n, n, n);
}
BENCHMARK(BM_MatmulCpu)->Arg(512)->Arg(1024)->Arg(2048)->UseRealTime()->Unit(benchmark::kMillisecond);

// Layer norm forward over rows of 768 (f32 parameters), and the fused classifier on a few
// rows of GPT-2's padded vocabulary: small, for the CPU.
void BM_LayerNormCpu(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = kiln::randn({rows, cols}), w = kiln::ones({cols}), b = kiln::zeros({cols});
  for (auto _ : state) {
    Tensor y = kiln::layer_norm(x, w, b);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 2 * rows * cols * 4);
}
BENCHMARK(BM_LayerNormCpu)->Args({1024, 768})->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_FusedCrossEntropyCpu(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = kiln::randn({rows, cols}).requires_grad_(true);  // training: dlogits written
  const Tensor t = kiln::randint(0, 50257, {rows});
  for (auto _ : state) {
    Tensor loss = kiln::fused_cross_entropy(x, t, 50257);
    benchmark::DoNotOptimize(loss.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * 2 * rows * cols * 4);  // logits in, dlogits out
}
BENCHMARK(BM_FusedCrossEntropyCpu)->Args({64, 50304})->UseRealTime()->Unit(benchmark::kMillisecond);

// ================================================================ CUDA
#ifdef KILN_WITH_CUDA

const kiln::Device kCuda{kiln::DeviceType::CUDA, 0};
constexpr size_t kFlushBytes = 256u << 20;

bool skip_without_cuda(benchmark::State& state) {
  if (kiln::cuda_device_count() > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

cudaStream_t stream() { return kiln::cuda::current_stream(); }

// Overwrites L2 with a buffer far larger than it, in stream order before the timed work.
void flush_l2() {
  static void* buffer = [] {
    void* p = nullptr;
    KILN_CUDA_CHECK(cudaMalloc(&p, kFlushBytes));
    return p;
  }();
  KILN_CUDA_CHECK(cudaMemsetAsync(buffer, 0, kFlushBytes, stream()));
}

class EventTimer {
 public:
  EventTimer() {
    KILN_CUDA_CHECK(cudaEventCreate(&start_));
    KILN_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Seconds `fn` takes on kiln's stream (work it enqueues between two events).
  template <class Fn>
  double time(Fn&& fn, bool flush) {
    if (flush) flush_l2();
    KILN_CUDA_CHECK(cudaEventRecord(start_, stream()));
    fn();
    KILN_CUDA_CHECK(cudaEventRecord(stop_, stream()));
    KILN_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Median of `reps` event-timed runs after one warm-up: for the baselines computed once.
template <class Fn>
double median_seconds(Fn&& fn, bool flush, int reps = 21) {
  EventTimer timer;
  fn();
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(timer.time(fn, flush));
  std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
  return t[reps / 2];
}

// The benchmark loop: warm-up (allocator, handles, module loading), then one timed op per
// iteration reported as manual time. Returns the total seconds reported.
template <class Fn>
double run_timed(benchmark::State& state, Fn&& fn, bool flush) {
  fn();
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
  EventTimer timer;
  double total = 0;
  for (auto _ : state) {
    const double s = timer.time(fn, flush);
    state.SetIterationTime(s);
    total += s;
  }
  return total;
}

// Bytes per second of a device-to-device cudaMemcpyAsync that reads and writes `bytes` in all
// (bytes / 2 each way), measured once per byte count.
double copy_bandwidth(int64_t bytes) {
  static std::map<int64_t, double> cache;
  if (auto it = cache.find(bytes); it != cache.end()) return it->second;
  const size_t half = static_cast<size_t>(bytes / 2);
  void *src = nullptr, *dst = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&src, half));
  KILN_CUDA_CHECK(cudaMalloc(&dst, half));
  KILN_CUDA_CHECK(cudaMemsetAsync(src, 1, half, stream()));
  const double s = median_seconds(
      [&] { KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, half, cudaMemcpyDeviceToDevice, stream())); },
      /*flush=*/true);
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream()));
  KILN_CUDA_CHECK(cudaFree(src));
  KILN_CUDA_CHECK(cudaFree(dst));
  return cache[bytes] = static_cast<double>(2 * half) / s;
}

// bytes_per_second, plus the copy roof for the same traffic and the fraction of it achieved.
void report_bandwidth(benchmark::State& state, int64_t bytes, double total_seconds) {
  if (state.iterations() == 0 || total_seconds <= 0) return;
  state.SetBytesProcessed(state.iterations() * bytes);
  const double achieved = static_cast<double>(bytes) * static_cast<double>(state.iterations()) /
                          total_seconds;
  const double copy = copy_bandwidth(bytes);
  state.counters["copy_GBps"] = copy / 1e9;
  state.counters["frac_of_copy"] = achieved / copy;
}

Tensor cuda_rand(const kiln::Shape& shape, DType dtype) {
  return kiln::rand(shape, {.dtype = DType::f32, .device = kCuda}).to(dtype);
}

void BM_AddCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t n = state.range(0);
  const Tensor a = cuda_rand({n}, dtype), b = cuda_rand({n}, dtype);
  const double s = run_timed(state, [&] { benchmark::DoNotOptimize(kiln::add(a, b).data_ptr()); }, true);
  report_bandwidth(state, 3 * n * static_cast<int64_t>(kiln::element_size(dtype)), s);
}

void BM_SumLastDimCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = cuda_rand({rows, cols}, dtype);
  const double s = run_timed(state, [&] { benchmark::DoNotOptimize(kiln::sum(x, {1}).data_ptr()); }, true);
  report_bandwidth(state, (rows * cols + rows) * static_cast<int64_t>(kiln::element_size(dtype)), s);
}

void BM_SumAllCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = cuda_rand({rows, cols}, dtype);
  const double s = run_timed(state, [&] { benchmark::DoNotOptimize(kiln::sum(x).data_ptr()); }, true);
  report_bandwidth(state, rows * cols * static_cast<int64_t>(kiln::element_size(dtype)), s);
}

void BM_SoftmaxCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = state.range(0), cols = state.range(1);
  const Tensor x = cuda_rand({rows, cols}, dtype);
  const double s = run_timed(state, [&] { benchmark::DoNotOptimize(kiln::softmax(x, 1).data_ptr()); }, true);
  report_bandwidth(state, 2 * rows * cols * static_cast<int64_t>(kiln::element_size(dtype)), s);
}

// Raw cuBLAS at kiln's matmul shape (row-major [n, n] @ [n, n], f32 accumulate, no TF32 for
// f32: kiln's default), in TFLOP/s; measured once per (dtype, n).
double cublas_tflops(DType dtype, int64_t n) {
  static std::map<std::pair<DType, int64_t>, double> cache;
  if (auto it = cache.find({dtype, n}); it != cache.end()) return it->second;
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    KILN_CUBLAS_CHECK(cublasCreate(&h));
    return h;
  }();
  KILN_CUBLAS_CHECK(cublasSetStream(handle, stream()));
  const Tensor a = cuda_rand({n, n}, dtype), b = cuda_rand({n, n}, dtype);
  Tensor c = kiln::empty({n, n}, {.dtype = dtype, .device = kCuda});
  const cudaDataType type = dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const float alpha = 1.0f, beta = 0.0f;
  const int dim = static_cast<int>(n);
  // Row-major C = A B is column-major C^T = B^T A^T: pass B first.
  const double s = median_seconds(
      [&] {
        KILN_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, dim, dim, dim, &alpha,
                                       b.data_ptr(), type, dim, a.data_ptr(), type, dim, &beta,
                                       c.data_ptr(), type, dim, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
      },
      /*flush=*/false, /*reps=*/11);
  return cache[{dtype, n}] = 2.0 * static_cast<double>(n) * static_cast<double>(n) *
                             static_cast<double>(n) / s / kTera;
}

void BM_MatmulCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t n = state.range(0);
  const Tensor a = cuda_rand({n, n}, dtype), b = cuda_rand({n, n}, dtype);
  const double cublas = cublas_tflops(dtype, n);
  const double s =
      run_timed(state, [&] { benchmark::DoNotOptimize(kiln::matmul(a, b).data_ptr()); }, false);
  if (state.iterations() == 0 || s <= 0) return;
  state.SetBytesProcessed(state.iterations() * 3 * n * n * static_cast<int64_t>(kiln::element_size(dtype)));
  // Plain numbers (not rate counters) so the two sit side by side in the same units.
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  state.counters["TFLOPS"] = flops * static_cast<double>(state.iterations()) / s / kTera;
  state.counters["cublas_TFLOPS"] = cublas;
}

// ---------------------------------------------------------------- GPT-2 step ops
constexpr int64_t kGptRows = 8192, kGptChannels = 768, kGptVocab = 50304, kGptValidVocab = 50257;

int64_t bytes_of(int64_t elements, DType dtype) {
  return elements * static_cast<int64_t>(kiln::element_size(dtype));
}

// Layer norm forward (x in, y out, f32 mean and rstd out).
void BM_LayerNormForwardCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = kGptRows, cols = kGptChannels;
  const Tensor x = cuda_rand({rows, cols}, dtype);
  const Tensor w = cuda_rand({cols}, DType::f32), b = cuda_rand({cols}, DType::f32);
  const double s = run_timed(state, [&] { benchmark::DoNotOptimize(kiln::layer_norm(x, w, b).data_ptr()); }, true);
  report_bandwidth(state, 2 * bytes_of(rows * cols, dtype) + 2 * rows * 4, s);
}

// Layer norm backward, the kernel alone (dx, dweight, dbias): x and dy in, dx out.
void BM_LayerNormBackwardCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = kGptRows, cols = kGptChannels;
  const kiln::TensorOptions acc{.dtype = DType::f32, .device = kCuda};
  const Tensor x = cuda_rand({rows, cols}, dtype), dy = cuda_rand({rows, cols}, dtype);
  const Tensor w = cuda_rand({cols}, DType::f32), b = cuda_rand({cols}, DType::f32);
  Tensor y = kiln::empty({rows, cols}, x.options()), mean = kiln::empty({rows}, acc), rstd = kiln::empty({rows}, acc);
  Tensor no_sum;
  kiln::layer_norm_stub(kCuda, y, mean, rstd, no_sum, x, Tensor(), w, b, 1e-5);
  Tensor dx = kiln::empty({rows, cols}, x.options()), dw = kiln::empty({cols}, acc), db = kiln::empty({cols}, acc);
  const double s = run_timed(
      state, [&] { kiln::layer_norm_backward_stub(kCuda, dx, dw, db, dy, x, mean, rstd, w); }, true);
  report_bandwidth(state, 3 * bytes_of(rows * cols, dtype) + 2 * rows * 4, s);
}

// x + residual and layer_norm of it in one kernel: x and residual in, sum and normed out.
void BM_AddLayerNormCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = kGptRows, cols = kGptChannels;
  const Tensor x = cuda_rand({rows, cols}, dtype), r = cuda_rand({rows, cols}, dtype);
  const Tensor w = cuda_rand({cols}, DType::f32), b = cuda_rand({cols}, DType::f32);
  const double s = run_timed(
      state, [&] { benchmark::DoNotOptimize(kiln::add_layer_norm(x, r, w, b).second.data_ptr()); }, true);
  report_bandwidth(state, 4 * bytes_of(rows * cols, dtype) + 2 * rows * 4, s);
}

// GELU forward then backward through autograd at the MLP's width (4 * 768): forward reads x
// and writes y, backward reads x and dy and writes dx, and the leaf's first gradient is
// copied into .grad (read + write): 7 passes over the tensor.
void BM_GeluForwardBackwardCuda(benchmark::State& state, DType dtype) {
  if (skip_without_cuda(state)) return;
  const int64_t n = kGptRows * 4 * kGptChannels;
  const Tensor x0 = cuda_rand({n}, dtype), g = cuda_rand({n}, dtype);
  const double s = run_timed(
      state,
      [&] {
        Tensor x = x0.detach().requires_grad_(true);
        kiln::gelu(x).backward(g);
        benchmark::DoNotOptimize(x.grad().data_ptr());
      },
      true);
  report_bandwidth(state, 7 * bytes_of(n, dtype), s);
}

// The fused classifier in training (logits require grad): logits in, dlogits out (per-row
// losses and the mean are small). With `eval` no gradient is wanted: logits in only.
void BM_FusedCrossEntropyCuda(benchmark::State& state, DType dtype, bool eval) {
  if (skip_without_cuda(state)) return;
  const int64_t rows = kGptRows, cols = kGptVocab;
  const Tensor x = cuda_rand({rows, cols}, dtype).requires_grad_(!eval);
  const Tensor t = kiln::randint(0, kGptValidVocab, {rows}, {.dtype = DType::i32, .device = kCuda});
  const double s = run_timed(
      state, [&] { benchmark::DoNotOptimize(kiln::fused_cross_entropy(x, t, kGptValidVocab).data_ptr()); }, true);
  report_bandwidth(state, (eval ? 1 : 2) * bytes_of(rows * cols, dtype) + rows * 4, s);
}

// One fused AdamW step over GPT-2 124M's parameter list (f32): per parameter, param, grad
// and both moments read, param and moments written: 28 bytes.
void BM_AdamWCuda(benchmark::State& state) {
  if (skip_without_cuda(state)) return;
  const int64_t c = kGptChannels;
  std::vector<kiln::Shape> shapes = {{kGptVocab, c}, {1024, c}};
  for (int layer = 0; layer < 12; ++layer) {
    for (const kiln::Shape& sh : std::vector<kiln::Shape>{{c}, {c}, {3 * c, c}, {3 * c}, {c, c}, {c}, {c}, {c},
                                                           {4 * c, c}, {4 * c}, {c, 4 * c}, {c}})
      shapes.push_back(sh);
  }
  shapes.push_back({c});
  shapes.push_back({c});
  std::vector<Tensor> params, grads, m, v;
  int64_t numel = 0;
  for (const kiln::Shape& sh : shapes) {
    params.push_back(cuda_rand(sh, DType::f32));
    grads.push_back(cuda_rand(sh, DType::f32));
    m.push_back(kiln::zeros(sh, {.device = kCuda}));
    v.push_back(kiln::zeros(sh, {.device = kCuda}));
    numel += params.back().numel();
  }
  const kiln::AdamHyperParams h{.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
  int64_t step = 0;
  const double s = run_timed(state, [&] { kiln::fused_adam_update(params, grads, m, v, h, ++step); }, true);
  state.counters["params_M"] = static_cast<double>(numel) / 1e6;
  report_bandwidth(state, 28 * numel, s);
}

#define KILN_CUDA_BENCH(fn, dtype) \
  BENCHMARK_CAPTURE(fn, dtype, DType::dtype)->UseManualTime()->Unit(benchmark::kMicrosecond)

KILN_CUDA_BENCH(BM_AddCuda, f32)->Arg(1 << 16)->Arg(1 << 20)->Arg(1 << 24);
KILN_CUDA_BENCH(BM_AddCuda, bf16)->Arg(1 << 16)->Arg(1 << 20)->Arg(1 << 24);
KILN_CUDA_BENCH(BM_SumLastDimCuda, f32)->Args({4096, 4096});
KILN_CUDA_BENCH(BM_SumLastDimCuda, bf16)->Args({4096, 4096});
KILN_CUDA_BENCH(BM_SumAllCuda, f32)->Args({4096, 4096});
KILN_CUDA_BENCH(BM_SumAllCuda, bf16)->Args({4096, 4096});
KILN_CUDA_BENCH(BM_SoftmaxCuda, f32)->Args({4096, 1024})->Args({1024, 50304});
KILN_CUDA_BENCH(BM_SoftmaxCuda, bf16)->Args({4096, 1024})->Args({1024, 50304});
KILN_CUDA_BENCH(BM_MatmulCuda, f32)->Arg(512)->Arg(1024)->Arg(2048)->Arg(4096);
KILN_CUDA_BENCH(BM_MatmulCuda, bf16)->Arg(512)->Arg(1024)->Arg(2048)->Arg(4096);
KILN_CUDA_BENCH(BM_LayerNormForwardCuda, f32);
KILN_CUDA_BENCH(BM_LayerNormForwardCuda, bf16);
KILN_CUDA_BENCH(BM_LayerNormBackwardCuda, f32);
KILN_CUDA_BENCH(BM_LayerNormBackwardCuda, bf16);
KILN_CUDA_BENCH(BM_AddLayerNormCuda, f32);
KILN_CUDA_BENCH(BM_AddLayerNormCuda, bf16);
KILN_CUDA_BENCH(BM_GeluForwardBackwardCuda, f32);
KILN_CUDA_BENCH(BM_GeluForwardBackwardCuda, bf16);
BENCHMARK_CAPTURE(BM_FusedCrossEntropyCuda, f32, DType::f32, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_FusedCrossEntropyCuda, bf16, DType::bf16, false)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_FusedCrossEntropyCuda, bf16_eval, DType::bf16, true)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AdamWCuda)->UseManualTime()->Unit(benchmark::kMicrosecond);

#endif  // KILN_WITH_CUDA

}  // namespace

BENCHMARK_MAIN();
