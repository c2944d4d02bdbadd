// One training step of the MLP 784-512-512-10 at batch 128: forward, cross-entropy, backward,
// AdamW step, zero_grad. bench/torch_mlp_step.py times the same step in PyTorch and
// scripts/bench_mlp.sh runs the two side by side (issue 4: kiln <= 0.8x PyTorch's time on the CPU).
//
//   build-release/bench/bench_mlp_step --benchmark_filter=Cpu
//
// Besides Google Benchmark's mean (real time: the work runs on OpenMP threads), each step is
// timed on its own, and the counters median_ms and min_ms give the per-step median and minimum,
// the numbers the PyTorch script reports. The CUDA variant synchronises after every step, so
// samples_per_s counts finished steps; it is skipped when no GPU is visible.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "nn/linear.h"
#include "optim/param_groups.h"
#include "optim/registry.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/cuda_context.h"
#endif

namespace {

using kiln::Device;
using kiln::Tensor;

constexpr int64_t kBatch = 128;
constexpr int kWarmupSteps = 20;
constexpr int kSteps = 500;  // also bench/torch_mlp_step.py's default

// The model, optimizer and one fixed batch on `device`, as the PyTorch script builds them.
class MlpStep {
 public:
  explicit MlpStep(Device device) : device_(device) {
    kiln::manual_seed(0);
    model_ = std::make_shared<kiln::nn::Sequential>();
    model_->add(std::make_shared<kiln::nn::Flatten>());
    model_->add(std::make_shared<kiln::nn::Linear>(784, 512));
    model_->add(std::make_shared<kiln::nn::ReLU>());
    model_->add(std::make_shared<kiln::nn::Linear>(512, 512));
    model_->add(std::make_shared<kiln::nn::ReLU>());
    model_->add(std::make_shared<kiln::nn::Linear>(512, 10));
    model_->to(device);
    // AdamW(lr=1e-3, weight_decay=0.01); biases go to the no-decay group, which costs nothing.
    optimizer_ = kiln::make_optimizer(
        "adamw", kiln::make_param_groups(model_->named_parameters(), 0.01), {.lr = 1e-3});
    x_ = kiln::randn({kBatch, 1, 28, 28}, {.device = device});
    y_ = kiln::randint(0, 10, {kBatch}, {.dtype = kiln::DType::i64, .device = device});
  }

  void step() {
    Tensor loss = kiln::cross_entropy(model_->forward(x_), y_);
    loss.backward();
    optimizer_->step();
    optimizer_->zero_grad();
    synchronize();
  }

 private:
  void synchronize() {
#ifdef KILN_WITH_CUDA
    if (device_.is_cuda()) KILN_CUDA_CHECK(cudaStreamSynchronize(kiln::cuda::current_stream()));
#endif
  }

  Device device_;
  std::shared_ptr<kiln::nn::Sequential> model_;
  std::unique_ptr<kiln::Optimizer> optimizer_;
  Tensor x_, y_;
};

void run_steps(benchmark::State& state, Device device) {
  MlpStep mlp(device);
  for (int i = 0; i < kWarmupSteps; ++i) mlp.step();

  std::vector<double> ms;
  ms.reserve(kSteps);
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    mlp.step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  if (ms.empty()) return;
  std::sort(ms.begin(), ms.end());
  state.counters["median_ms"] = ms[ms.size() / 2];
  state.counters["min_ms"] = ms.front();
  state.counters["samples_per_s"] =
      benchmark::Counter(static_cast<double>(kBatch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = device.is_cpu() ? omp_get_max_threads() : 0;
}

void BM_MlpStepCpu(benchmark::State& state) { run_steps(state, kiln::kCPU); }
BENCHMARK(BM_MlpStepCpu)->Iterations(kSteps)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_MlpStepCuda(benchmark::State& state) {
  if (kiln::cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  run_steps(state, Device("cuda:0"));
}
BENCHMARK(BM_MlpStepCuda)->Iterations(kSteps)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
