// The CUDA optimizer paths against the CPU ones, five steps on identical inputs:
//   - the fused multi-tensor Adam/AdamW kernel on tensors of odd sizes (1, 3, 1000003), on
//     more tensors than one launch carries (36), on a tensor with more chunks than one launch
//     carries (320 of 65536 elements), and on 4-byte-aligned views (the one-element path);
//   - the AdamW and SGD optimizers on CUDA parameters, and an AdamW checkpoint taken on the
//     GPU and resumed on the CPU;
//   - clip_grad_norm_ with gradients on the GPU.
// Tolerances: the GPU contracts a*b + c into one fused multiply-add where the CPU build
// (x86-64 baseline, no FMA) rounds twice, so single elements differ by an ulp or two per
// operation. f32 results must agree to 1e-6 relative; f64 to 1e-12. exp_avg can cancel
// towards zero, where relative error means nothing, so each check also allows an absolute
// slack of the same factor times the tensor's largest |value|.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/adamw.cu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "optim/adam.h"
#include "optim/clip_grad.h"
#include "optim/fused_step.h"
#include "optim/sgd.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::kCuda;

Tensor random_cpu(int64_t n, DType dtype, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& x : v) x = dist(rng);
  return from_vector(v, {n}, {.dtype = dtype});
}

// |cuda - cpu| <= tol * |cpu| + tol * max|cpu| for every element, tol 1e-12 for f64 and 1e-6
// for f32; a NaN fails.
void expect_matches(const Tensor& cuda_result, const Tensor& cpu_result, const std::string& what) {
  ASSERT_FALSE(cpu_result.is_cuda()) << what;
  const double tol = cpu_result.dtype() == DType::f64 ? 1e-12 : 1e-6;
  testing::expect_matches(cuda_result, cpu_result,
                          {.rtol = tol, .atol_scale = tol, .equal_values_pass = false}, what);
}

// The four lists of fused_adam_update, on one device.
struct AdamLists {
  std::vector<Tensor> params, grads, exp_avgs, exp_avg_sqs;
};

AdamLists cpu_lists(const std::vector<int64_t>& sizes, DType dtype, uint32_t seed) {
  AdamLists l;
  for (size_t i = 0; i < sizes.size(); ++i) {
    l.params.push_back(random_cpu(sizes[i], dtype, seed + static_cast<uint32_t>(i)));
    l.exp_avgs.push_back(zeros({sizes[i]}, {.dtype = dtype}));
    l.exp_avg_sqs.push_back(zeros({sizes[i]}, {.dtype = dtype}));
  }
  return l;
}

AdamLists to_cuda(const AdamLists& l) {
  AdamLists c;
  for (size_t i = 0; i < l.params.size(); ++i) {
    c.params.push_back(l.params[i].to(kCuda));
    c.exp_avgs.push_back(l.exp_avgs[i].to(kCuda));
    c.exp_avg_sqs.push_back(l.exp_avg_sqs[i].to(kCuda));
  }
  return c;
}

// Five steps with fresh random gradients (the same on both devices), then every tensor of
// the CUDA lists against the CPU ones.
void run_and_compare(AdamLists& cpu, AdamLists& cuda, const AdamHyperParams& h,
                     const std::string& what) {
  const DType dtype = cpu.params[0].dtype();
  for (int64_t step = 1; step <= 5; ++step) {
    cpu.grads.clear();
    cuda.grads.clear();
    for (size_t i = 0; i < cpu.params.size(); ++i) {
      cpu.grads.push_back(
          random_cpu(cpu.params[i].numel(), dtype, 1000 * static_cast<uint32_t>(step) + i, -2, 2));
      cuda.grads.push_back(cpu.grads.back().to(kCuda));
    }
    fused_adam_update(cpu.params, cpu.grads, cpu.exp_avgs, cpu.exp_avg_sqs, h, step);
    fused_adam_update(cuda.params, cuda.grads, cuda.exp_avgs, cuda.exp_avg_sqs, h, step);
  }
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    const std::string label = what + " tensor " + std::to_string(i) + " (" +
                              std::to_string(cpu.params[i].numel()) + " elements) ";
    expect_matches(cuda.params[i], cpu.params[i], label + "param");
    expect_matches(cuda.exp_avgs[i], cpu.exp_avgs[i], label + "exp_avg");
    expect_matches(cuda.exp_avg_sqs[i], cpu.exp_avg_sqs[i], label + "exp_avg_sq");
  }
}

const AdamHyperParams kAdamW{
    .lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .decoupled = true};
const AdamHyperParams kAdamL2{
    .lr = 1e-2, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.05, .decoupled = false};

TEST(FusedAdamCuda, OddSizesMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const DType dtype : {DType::f32, DType::f64}) {
    for (const AdamHyperParams& h : {kAdamW, kAdamL2}) {
      AdamLists cpu = cpu_lists({1, 3, 1000003}, dtype, 7);
      AdamLists cuda = to_cuda(cpu);
      run_and_compare(
          cpu, cuda, h,
          std::string(h.decoupled ? "adamw " : "adam ") + std::string(dtype_name(dtype)));
    }
  }
}

TEST(FusedAdamCuda, MoreTensorsThanOneLaunchCarries) {
  KILN_SKIP_WITHOUT_CUDA();
  // 80 tensors (36 per launch) of sizes 1 to ~140000 (some of several chunks).
  std::vector<int64_t> sizes;
  for (int64_t i = 0; i < 80; ++i) sizes.push_back(1 + (i * i * 2213) % 140000);
  AdamLists cpu = cpu_lists(sizes, DType::f32, 11);
  AdamLists cuda = to_cuda(cpu);
  run_and_compare(cpu, cuda, kAdamW, "80 tensors");
}

TEST(FusedAdamCuda, MoreChunksThanOneLaunchCarries) {
  KILN_SKIP_WITHOUT_CUDA();
  // 320 chunks of 65536 fill a launch; this tensor continues into a second one, after a
  // small tensor that takes the first launch's first block.
  AdamLists cpu = cpu_lists({5, 320 * 65536 + 77}, DType::f32, 13);
  AdamLists cuda = to_cuda(cpu);
  run_and_compare(cpu, cuda, kAdamW, "long tensor");
}

TEST(FusedAdamCuda, UnalignedViewsMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  // Views one element into their storage: 4 bytes past a 16-byte boundary, so the kernel
  // takes its element-at-a-time path. They are contiguous, so updated in place.
  AdamLists cpu, cuda;
  std::vector<Tensor> cpu_bases, cuda_bases;
  for (const int64_t n : {3, 1001, 70001}) {
    Tensor base = random_cpu(n + 1, DType::f32, static_cast<uint32_t>(n));
    cpu_bases.push_back(base);
    cuda_bases.push_back(base.to(kCuda));
    cpu.params.push_back(cpu_bases.back().narrow(0, 1, n));
    cuda.params.push_back(cuda_bases.back().narrow(0, 1, n));
    for (AdamLists* l : {&cpu, &cuda}) {
      const Device d = l == &cpu ? kCPU : kCuda;
      l->exp_avgs.push_back(zeros({n + 1}, {.device = d}).narrow(0, 1, n));
      l->exp_avg_sqs.push_back(zeros({n + 1}, {.device = d}).narrow(0, 1, n));
    }
  }
  ASSERT_NE(reinterpret_cast<uintptr_t>(cuda.params[0].data_ptr()) % 16, 0u);
  run_and_compare(cpu, cuda, kAdamW, "unaligned view");
  // In place: the bases saw the update.
  for (size_t i = 0; i < cpu_bases.size(); ++i)
    expect_matches(cuda_bases[i], cpu_bases[i], "base " + std::to_string(i));
}

// ---------------------------------------------------------------- optimizers on the GPU

struct Model {
  std::vector<Tensor> params;
  static Model make(Device d, uint32_t seed) {
    Model m;
    const std::vector<int64_t> sizes = {1, 3, 1000003, 4096};
    for (size_t i = 0; i < sizes.size(); ++i) {
      Tensor p = random_cpu(sizes[i], DType::f32, seed + static_cast<uint32_t>(i)).to(d);
      p.requires_grad_();
      m.params.push_back(p);
    }
    return m;
  }
  void set_grads(uint32_t seed) {
    for (size_t i = 0; i < params.size(); ++i)
      params[i].set_grad(
          random_cpu(params[i].numel(), DType::f32, seed + static_cast<uint32_t>(i), -2, 2)
              .to(params[i].device()));
  }
};

void expect_models_match(const Model& cuda, const Model& cpu, const std::string& what) {
  for (size_t i = 0; i < cpu.params.size(); ++i)
    expect_matches(cuda.params[i], cpu.params[i], what + " param " + std::to_string(i));
}

TEST(OptimizerCuda, AdamWAndSgdMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const OptimizerOptions sgd_options{
      .lr = 0.05, .weight_decay = 0.01, .momentum = 0.9, .nesterov = true};
  const OptimizerOptions adamw_options{.lr = 1e-2, .weight_decay = 0.1};
  for (const bool use_sgd : {false, true}) {
    Model cpu = Model::make(kCPU, 3), cuda = Model::make(kCuda, 3);
    std::unique_ptr<Optimizer> opt_cpu, opt_cuda;
    if (use_sgd) {
      opt_cpu.reset(new SGD({{.params = cpu.params}}, sgd_options));
      opt_cuda.reset(new SGD({{.params = cuda.params}}, sgd_options));
    } else {
      opt_cpu.reset(new AdamW({{.params = cpu.params}}, adamw_options));
      opt_cuda.reset(new AdamW({{.params = cuda.params}}, adamw_options));
    }
    for (uint32_t s = 0; s < 5; ++s) {
      cpu.set_grads(100 * s);
      cuda.set_grads(100 * s);
      opt_cpu->step();
      opt_cuda->step();
    }
    expect_models_match(cuda, cpu, use_sgd ? "sgd" : "adamw");
    // The state stayed with the parameters.
    for (const auto& [name, t] : opt_cuda->state_tensors()) {
      if (name.rfind("state.", 0) == 0 && name.find(".step") == std::string::npos) {
        EXPECT_TRUE(t.is_cuda()) << name;
      }
    }
  }
}

TEST(OptimizerCuda, CheckpointFromGpuResumesOnCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const OptimizerOptions o{.lr = 1e-2, .weight_decay = 0.1};
  Model cuda = Model::make(kCuda, 5), cpu = Model::make(kCPU, 5);
  AdamW opt_cuda({{.params = cuda.params}}, o), opt_cpu({{.params = cpu.params}}, o);
  for (uint32_t s = 0; s < 3; ++s) {
    cuda.set_grads(10 * s);
    opt_cuda.step();
  }
  // Resume on the CPU from the GPU's parameters and state.
  for (size_t i = 0; i < cpu.params.size(); ++i) cpu.params[i].detach().copy_(cuda.params[i]);
  opt_cpu.load_state_tensors(opt_cuda.state_tensors());
  for (const auto& [name, t] : opt_cpu.state_tensors()) EXPECT_FALSE(t.is_cuda()) << name;
  for (uint32_t s = 3; s < 5; ++s) {
    cuda.set_grads(10 * s);
    cpu.set_grads(10 * s);
    opt_cuda.step();
    opt_cpu.step();
  }
  expect_models_match(cuda, cpu, "resumed adamw");
}

TEST(OptimizerCuda, ParametersOnBothDevices) {
  KILN_SKIP_WITHOUT_CUDA();
  // One optimizer over a CPU and a GPU parameter: each device's bucket updates on its own.
  Model cpu_only = Model::make(kCPU, 9), reference = Model::make(kCPU, 9);
  std::vector<Tensor> mixed = {cpu_only.params[0], cpu_only.params[2].to(kCuda).detach()};
  mixed[1].requires_grad_();
  AdamW opt({{.params = mixed}}, {.lr = 1e-2});
  AdamW ref({{.params = {reference.params[0], reference.params[2]}}}, {.lr = 1e-2});
  for (uint32_t s = 0; s < 5; ++s) {
    Tensor g0 = random_cpu(1, DType::f32, 50 + s), g2 = random_cpu(1000003, DType::f32, 60 + s);
    mixed[0].set_grad(g0);
    mixed[1].set_grad(g2.to(kCuda));
    reference.params[0].set_grad(g0.clone());
    reference.params[2].set_grad(g2.clone());
    opt.step();
    ref.step();
  }
  EXPECT_EQ(mixed[0].to_vector<double>(),
            reference.params[0].to_vector<double>());  // same CPU code
  expect_matches(mixed[1], reference.params[2], "gpu parameter");
}

TEST(ClipGradNormCuda, MatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const double max_norm : {1.0, 1e6}) {
    Model cpu = Model::make(kCPU, 21), cuda = Model::make(kCuda, 21);
    cpu.set_grads(7);
    cuda.set_grads(7);
    const double norm_cpu = clip_grad_norm_(cpu.params, max_norm);
    const double norm_cuda = clip_grad_norm_(cuda.params, max_norm);
    EXPECT_NEAR(norm_cuda, norm_cpu, 1e-6 * norm_cpu) << "max_norm " << max_norm;
    EXPECT_GT(norm_cpu, 100.0);  // about sqrt(1e6 * 4/3): clipping happens at max_norm 1
    for (size_t i = 0; i < cpu.params.size(); ++i)
      expect_matches(cuda.params[i].grad(), cpu.params[i].grad(), "grad " + std::to_string(i));
  }
}

}  // namespace
}  // namespace kiln
