// DDP: how much of the gradient all-reduce hides behind backward. W ranks (copies of this
// binary on 127.0.0.1, Gloo on the CPU or NCCL with one GPU per rank) train an MLP step by step
// two ways, interleaved:
//   overlapped  DistributedDataParallel: buckets all-reduce while backward runs
//   after       backward under no_sync, then the same buckets all-reduced (what DDP costs
//               without overlap)
// and rank 0 prints the mean step time of each, DDP's comm window, exposed wait and overlap
// fraction (dist/ddp.h's OverlapStats).
//
//   build/bench/bench_ddp_overlap                              # 2 CPU ranks, Gloo
//   build/bench/bench_ddp_overlap --world 4 --device cuda --hidden 4096 --bucket-mb 25
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "models/registry.h"
#include "tests/dist_spawn.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_context.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using namespace kiln;

struct Args {
  int world = 2, steps = 10, hidden = 1024, layers = 3, batch = 64;
  double bucket_mb = 4;
  std::string device = "cpu";
  bool worker = false;
};

void sync_device(Device d) {
#ifdef KILN_WITH_CUDA
  if (d.is_cuda()) cudaStreamSynchronize(cuda::current_stream());
#else
  (void)d;
#endif
}

int worker(const Args& a) {
  dist::InitOptions o = dist::options_from_env();
  const Device device = a.device == "cuda" ? Device(DeviceType::CUDA, o.local_rank) : kCPU;
  auto comm = dist::init_process_group(o, device);
  manual_seed(0);
  models::ModelSpec spec;
  spec.hidden_sizes = std::vector<int64_t>(static_cast<size_t>(a.layers), a.hidden);
  auto model = models::make_model(spec);
  model->to(device);
  dist::DistributedDataParallel ddp(*model, *comm, {.bucket_mb = a.bucket_mb});
  const Tensor x = randn({a.batch, 1, 28, 28}, {.device = device});
  const Tensor y = zeros({a.batch}, {.dtype = DType::i64, .device = device});
  const std::vector<Tensor> params = model->parameters();
  // The same buckets, all-reduced after backward.
  std::vector<Tensor> flat;
  for (const auto& bucket : ddp.bucket_layout()) {
    int64_t n = 0;
    for (int i : bucket) n += params[static_cast<size_t>(i)].numel();
    flat.push_back(empty({n}, {.device = device}));
  }
  auto after_backward = [&] {
    {
      auto guard = ddp.no_sync();
      cross_entropy((*model)(x), y).backward();
    }
    NoGradGuard no_grad;
    std::vector<std::shared_ptr<dist::Work>> works;
    const auto layout = ddp.bucket_layout();
    for (size_t b = 0; b < layout.size(); ++b) {
      int64_t off = 0;
      for (int i : layout[b]) {
        const Tensor& p = params[static_cast<size_t>(i)];
        flat[b].narrow(0, off, p.numel()).copy_(p.grad().reshape({-1}));
        off += p.numel();
      }
      works.push_back(comm->all_reduce_async(flat[b], dist::ReduceOp::avg));
    }
    for (auto& w : works) w->wait();
  };
  auto overlapped = [&] {
    cross_entropy((*model)(x), y).backward();
    ddp.finish_gradient_sync();
  };
  double t_over = 0, t_after = 0, comm_s = 0, exposed = 0, bwd = 0;
  for (int s = -2; s < a.steps; ++s) {  // two warm-up steps
    for (int mode = 0; mode < 2; ++mode) {
      comm->barrier();
      sync_device(device);
      const auto t0 = Clock::now();
      if (mode == 0) overlapped();
      else after_backward();
      sync_device(device);
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      model->zero_grad();
      if (s < 0) continue;
      if (mode == 0) {
        t_over += dt;
        comm_s += ddp.last_overlap().comm_s;
        exposed += ddp.last_overlap().exposed_s;
        bwd += ddp.last_overlap().backward_s;
      } else {
        t_after += dt;
      }
    }
  }
  if (comm->rank() == 0) {
    const double n = a.steps;
    int64_t params_n = 0;
    for (const Tensor& p : params) params_n += p.numel();
    std::printf("%s, %d ranks, MLP %d x %d (%lld params, %.1f MB f32 grads), batch %d, %zu buckets of <= %g MB\n",
                comm->backend().c_str(), comm->world_size(), a.layers, a.hidden, static_cast<long long>(params_n),
                static_cast<double>(params_n) * 4 / 1e6, a.batch, ddp.bucket_layout().size(), a.bucket_mb);
    std::printf("step (fwd+bwd+sync): overlapped %.2f ms, all-reduce after backward %.2f ms (%.2fx)\n",
                1e3 * t_over / n, 1e3 * t_after / n, t_after / t_over);
    std::printf("DDP: backward %.2f ms, comm window %.2f ms, exposed %.2f ms, overlap fraction %.2f\n",
                1e3 * bwd / n, 1e3 * comm_s / n, 1e3 * exposed / n, comm_s > 0 ? 1.0 - exposed / comm_s : 0.0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (s == "--world") a.world = std::atoi(next().c_str());
    else if (s == "--steps") a.steps = std::atoi(next().c_str());
    else if (s == "--hidden") a.hidden = std::atoi(next().c_str());
    else if (s == "--layers") a.layers = std::atoi(next().c_str());
    else if (s == "--batch") a.batch = std::atoi(next().c_str());
    else if (s == "--bucket-mb") a.bucket_mb = std::atof(next().c_str());
    else if (s == "--device") a.device = next();
    else if (s == "--worker") a.worker = true;
    else {
      std::fprintf(stderr,
                   "usage: %s [--world N] [--steps N] [--hidden N] [--layers N] [--batch N] [--bucket-mb MB] "
                   "[--device cpu|cuda]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    if (a.worker) return worker(a);
    std::vector<std::string> args = {"--worker"};
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    kiln::testing::RankOptions opts;
    opts.limit = std::chrono::seconds(300);
    const auto codes = kiln::testing::spawn_ranks(args, a.world, opts);
    for (size_t r = 0; r < codes.size(); ++r)
      if (codes[r] != 0) {
        std::fprintf(stderr, "rank %zu exited with %d\n", r, codes[r]);
        return 1;
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ddp_overlap: %s\n", e.what());
    return 1;
  }
  return 0;
}
