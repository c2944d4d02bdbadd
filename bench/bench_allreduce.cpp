// All-reduce bandwidth, as nccl-tests reports it: algbw = bytes / time, and the bus bandwidth
// busbw = algbw * 2(n-1)/n, the rate each rank's link must sustain for a ring all-reduce (so
// numbers are comparable across world sizes). f32 sum, in place, sizes 4 KiB .. 256 MiB.
//
//   build/bench/bench_allreduce                 # Gloo with 2 spawned CPU processes, then NCCL
//   build/bench/bench_allreduce --max-mib 64 --gloo-world 3
//
// Every call is timed on its own and the table shows the median, mean and p90 per call; the
// bandwidths use the median. With Gloo on few cores a call now and then takes one scheduler tick
// (~4 ms, docs/collectives.md) and the mean is pulled up by those, so the median is the rate and
// mean/p90 show how often the outliers come.
//
// Gloo: the ranks are copies of this binary on 127.0.0.1 (loopback TCP), timed by rank 0 (a
// barrier before each size, none between calls). NCCL: world size 1 on GPU 0, timed with CUDA
// events on kiln's stream around each call; its "all-reduce" is a local device copy and its busbw
// formula gives 0, so the table shows algbw only. A run takes well under a minute.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "dist/communicator.h"
#include "tests/dist_spawn.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime.h>

#include "core/cuda_context.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using kiln::Tensor;
using namespace kiln::dist;

std::vector<int64_t> sizes_bytes(int64_t max_mib) {
  std::vector<int64_t> out;
  for (int64_t b = 4 << 10; b <= (max_mib << 20); b *= 4) out.push_back(b);
  return out;
}

// Enough calls for a stable median without spending more than ~2 s per size.
int iterations_for(int64_t bytes) {
  const int64_t it = (int64_t{64} << 20) / bytes;
  return static_cast<int>(std::clamp<int64_t>(it, 5, 200));
}

// The q-quantile of `v` (nearest rank), 0 <= q <= 1; reorders v.
double quantile(std::vector<double>& v, double q) {
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// One row from the seconds each call took.
void print_row(const char* backend, int world, int64_t bytes, std::vector<double> seconds) {
  double total = 0;
  for (double s : seconds) total += s;
  const double mean = total / static_cast<double>(seconds.size());
  const double median = quantile(seconds, 0.5), p90 = quantile(seconds, 0.9);
  const double algbw = static_cast<double>(bytes) / median / 1e9;
  const double busbw = algbw * 2.0 * (world - 1) / world;
  std::printf("%-7s %5d %12lld %6zu %11.1f %11.1f %11.1f %10.3f %10.3f\n", backend, world,
              static_cast<long long>(bytes), seconds.size(), median * 1e6, mean * 1e6, p90 * 1e6, algbw, busbw);
  std::fflush(stdout);
}

void print_header() {
  std::printf("# time per call: median, mean, p90; algbw and busbw from the median\n");
  std::printf("%-7s %5s %12s %6s %11s %11s %11s %10s %10s\n", "backend", "world", "bytes", "calls",
              "median_us", "mean_us", "p90_us", "algbw_GB/s", "busbw_GB/s");
}

// One Gloo rank (spawned): every rank runs the same loop; rank 0 prints.
int gloo_worker(int64_t max_mib) {
  InitOptions o = options_from_env();
  o.backend = "gloo";
  auto comm = init_process_group(o, kiln::kCPU);
  for (int64_t bytes : sizes_bytes(max_mib)) {
    Tensor t = kiln::full({bytes / 4}, 1.0);
    const int iters = iterations_for(bytes);
    comm->all_reduce(t);  // warm-up: connections, page faults
    comm->barrier();
    std::vector<double> seconds(static_cast<size_t>(iters));
    for (double& s : seconds) {
      const auto t0 = Clock::now();
      comm->all_reduce(t);
      s = std::chrono::duration<double>(Clock::now() - t0).count();
    }
    comm->barrier();
    if (comm->rank() == 0) print_row("gloo", comm->world_size(), bytes, std::move(seconds));
  }
  return 0;
}

#ifdef KILN_WITH_NCCL
void nccl_world1(int64_t max_mib) {
  const kiln::Device gpu{kiln::DeviceType::CUDA, 0};
  auto comm = init_process_group({.backend = "nccl"}, gpu);
  for (int64_t bytes : sizes_bytes(max_mib)) {
    Tensor t = kiln::full({bytes / 4}, 1.0, {.device = gpu});
    const int iters = iterations_for(bytes) * 5;
    cudaStream_t stream = kiln::cuda::current_stream();
    comm->all_reduce(t);
    cudaStreamSynchronize(stream);
    // An event before and after each call, all queued back to back: call i's time is the
    // stream's time from event i to event i + 1 (wait() orders the stream after the collective).
    std::vector<cudaEvent_t> events(static_cast<size_t>(iters) + 1);
    for (cudaEvent_t& e : events) cudaEventCreate(&e);
    cudaEventRecord(events[0], stream);
    for (int i = 0; i < iters; ++i) {
      comm->all_reduce(t);
      cudaEventRecord(events[static_cast<size_t>(i) + 1], stream);
    }
    cudaStreamSynchronize(stream);
    std::vector<double> seconds(static_cast<size_t>(iters));
    for (size_t i = 0; i < seconds.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, events[i], events[i + 1]);
      seconds[i] = ms * 1e-3;
    }
    for (cudaEvent_t& e : events) cudaEventDestroy(e);
    print_row("nccl", 1, bytes, std::move(seconds));
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int64_t max_mib = 256;
  int gloo_world = 2;
  bool worker = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--max-mib" && i + 1 < argc) max_mib = std::atoll(argv[++i]);
    else if (a == "--gloo-world" && i + 1 < argc) gloo_world = std::atoi(argv[++i]);
    else if (a == "--worker") worker = true;
    else {
      std::fprintf(stderr, "usage: %s [--max-mib N] [--gloo-world N]\n", argv[0]);
      return 2;
    }
  }
  try {
    if (worker) return gloo_worker(max_mib);
    print_header();
    std::fflush(stdout);  // before the ranks write to the same stdout
    kiln::testing::RankOptions opts;
    opts.limit = std::chrono::seconds(300);
    const auto codes = kiln::testing::spawn_ranks(
        {"--worker", "--max-mib", std::to_string(max_mib)}, gloo_world, opts);
    for (size_t r = 0; r < codes.size(); ++r)
      if (codes[r] != 0) std::fprintf(stderr, "gloo rank %zu exited with %d\n", r, codes[r]);
#ifdef KILN_WITH_NCCL
    if (kiln::cuda_is_available()) nccl_world1(max_mib);
    else std::printf("nccl: no CUDA device, skipped\n");
#else
    std::printf("nccl: not built (KILN_WITH_NCCL off), skipped\n");
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_allreduce: %s\n", e.what());
    return 1;
  }
  return 0;
}
