// GPT-2 124M training throughput on one GPU: the "gpt" model from models/registry.h at B=16,
// T=1024 on random tokens, bf16 autocast, flash attention, fused AdamW (lr 6e-4, betas 0.9 and
// 0.95, weight decay 0.1 on the matrices), as bench/torch_gpt2.py trains the same model in
// PyTorch; scripts/bench_gpt2.sh runs the two side by side. Prints one JSON line:
//   tokens_per_s   B*T per step over the timed steps (each step ends with a stream sync)
//   mfu            tokens_per_s * flops_per_token / peak, flops_per_token = 6N + 12*L*C*T
//                  (PaLM's, as nanoGPT's estimate_mfu: N without the position embedding),
//                  peak 989 TFLOP/s (H100/H200 dense bf16) unless --peak-tflops says otherwise
//   peak_allocated_bytes, peak_reserved_bytes   the caching allocator's peaks over the run
//   device_used_bytes   total - free from cudaMemGetInfo at the end (context, cuBLAS workspace
//                       and the allocator's cache included)
// Not a Google Benchmark program: one configuration, one line, for the comparison script.
//
//   bench_gpt2 [--preset gpt2-124M] [--batch 16] [--seq 1024] [--warmup 10] [--steps 30]
//              [--attention flash] [--no-autocast] [--peak-tflops 989] [--cpu]
// --cpu runs on the CPU (a dry run with a tiny preset: --preset gpt-char-tiny --seq 64).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/cuda_allocator.h"
#include "core/device.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "models/gpt.h"
#include "models/registry.h"
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

struct Options {
  std::string preset = "gpt2-124M";
  int64_t batch = 16, seq = 1024;
  int warmup = 10, steps = 30;
  std::string attention = "flash";
  bool autocast = true;
  double peak_tflops = 989.0;
  bool cpu = false;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "bench_gpt2: %s\nusage: bench_gpt2 [--preset NAME] [--batch B] [--seq T] [--warmup N] "
               "[--steps N] [--attention naive|flash|batched] [--no-autocast] [--peak-tflops F] [--cpu]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--preset") o.preset = value();
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a == "--steps") o.steps = std::stoi(value());
    else if (a == "--attention") o.attention = value();
    else if (a == "--no-autocast") o.autocast = false;
    else if (a == "--peak-tflops") o.peak_tflops = std::stod(value());
    else if (a == "--cpu") o.cpu = true;
    else usage(("unknown argument " + a).c_str());
  }
  if (o.batch < 1 || o.seq < 1 || o.steps < 1 || o.warmup < 0) usage("sizes and step counts must be positive");
  return o;
}

void synchronize(Device device) {
#ifdef KILN_WITH_CUDA
  if (device.is_cuda()) KILN_CUDA_CHECK(cudaStreamSynchronize(kiln::cuda::current_stream()));
#else
  (void)device;
#endif
}

int run(const Options& o) {
  const Device device = o.cpu ? kiln::kCPU : Device("cuda:0");
  if (!o.cpu && kiln::cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_gpt2: no CUDA device visible (run with --cpu for a CPU dry run)\n");
    return 1;
  }

  kiln::models::ModelSpec spec;
  spec.name = "gpt";
  spec.preset = o.preset;
  spec.attention = o.attention;
  spec.dropout = 0.0;
  kiln::manual_seed(0);
  std::shared_ptr<kiln::nn::Module> module = kiln::models::make_model(spec);
  auto* gpt = dynamic_cast<kiln::models::GPT*>(module.get());
  if (!gpt) {
    std::fprintf(stderr, "bench_gpt2: model 'gpt' is not a kiln::models::GPT\n");
    return 1;
  }
  const kiln::models::GPTConfig& cfg = gpt->config();
  if (o.seq > cfg.block_size) {
    std::fprintf(stderr, "bench_gpt2: --seq %lld exceeds the preset's block_size %lld\n", (long long)o.seq,
                 (long long)cfg.block_size);
    return 2;
  }
  module->to(device);
  module->train();
  auto optimizer = kiln::make_optimizer("adamw", kiln::make_param_groups(module->named_parameters(), 0.1),
                                        {.lr = 6e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8});

  // One fixed batch of random tokens (real text would change nothing in the arithmetic).
  kiln::Generator gen(1);
  const Tensor x = kiln::randint(0, cfg.vocab_size, {o.batch, o.seq}, {.dtype = kiln::DType::i64, .device = device}, &gen);
  const Tensor y = kiln::randint(0, cfg.vocab_size, {o.batch, o.seq}, {.dtype = kiln::DType::i64, .device = device}, &gen);

  auto step = [&]() {
    Tensor loss;
    {
      kiln::AutocastGuard autocast(kiln::DType::bf16, o.autocast);
      loss = gpt->loss(gpt->forward(x), y);
    }
    loss.backward();
    optimizer->step();
    optimizer->zero_grad();
    synchronize(device);
    return loss;
  };

  double first_loss = 0;
  for (int i = 0; i < o.warmup; ++i) {
    const Tensor loss = step();
    if (i == 0) first_loss = loss.item();
  }
  std::vector<double> ms;
  Tensor last;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) {
    const auto s = std::chrono::steady_clock::now();
    last = step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double last_loss = last.item();
  if (o.warmup == 0) first_loss = last_loss;

  const int64_t params = kiln::models::gpt_num_parameters(cfg);
  const int64_t n_flops = params - cfg.block_size * cfg.n_embd;  // nanoGPT: without wpe
  const double flops_per_token = 6.0 * double(n_flops) + 12.0 * cfg.n_layer * cfg.n_embd * double(o.seq);
  const double tokens_per_s = double(o.batch * o.seq) * o.steps / seconds;
  const double mfu = tokens_per_s * flops_per_token / (o.peak_tflops * 1e12);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());

  size_t peak_allocated = 0, peak_reserved = 0, device_used = 0;
  std::string device_name = o.cpu ? "cpu" : "cuda:0";
#ifdef KILN_WITH_CUDA
  if (device.is_cuda()) {
    const kiln::AllocatorStats stats = kiln::cuda_memory_stats(0);
    peak_allocated = stats.peak_allocated_bytes;
    peak_reserved = stats.peak_reserved_bytes;
    size_t free_bytes = 0, total_bytes = 0;
    KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    device_used = total_bytes - free_bytes;
    device_name = kiln::cuda::device_properties(0).name;
  }
#endif

  std::printf(
      "{\"name\": \"kiln_gpt2\", \"device\": \"%s\", \"preset\": \"%s\", \"params\": %lld, \"batch\": %lld, "
      "\"seq\": %lld, \"warmup\": %d, \"steps\": %d, \"autocast\": \"%s\", \"attention\": \"%s\", "
      "\"tokens_per_s\": %.1f, \"ms_per_step_median\": %.3f, \"ms_per_step_min\": %.3f, "
      "\"ms_per_step_mean\": %.3f, \"flops_per_token\": %.6g, \"peak_tflops\": %.1f, \"mfu\": %.6g, "
      "\"peak_allocated_bytes\": %zu, \"peak_reserved_bytes\": %zu, \"device_used_bytes\": %zu, "
      "\"loss_first\": %.4f, \"loss_last\": %.4f}\n",
      device_name.c_str(), o.preset.c_str(), (long long)params, (long long)o.batch, (long long)o.seq, o.warmup,
      o.steps, o.autocast ? "bf16" : "off", o.attention.c_str(), tokens_per_s, sorted[sorted.size() / 2],
      sorted.front(), seconds * 1e3 / o.steps, flops_per_token, o.peak_tflops, mfu, peak_allocated, peak_reserved,
      device_used, first_loss, last_loss);
  if (!std::isfinite(last_loss)) {
    std::fprintf(stderr, "bench_gpt2: the loss is not finite\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpt2: %s\n", e.what());
    return 1;
  }
}
