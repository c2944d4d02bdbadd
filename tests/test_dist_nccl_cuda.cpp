// The NCCL backend. On one GPU (world size 1) every collective and dtype must leave the right
// values, ordered after the work queued before it on kiln's stream and before the work queued
// after Work::wait. With two or more GPUs, two spawned ranks check sums across processes and
// that a rank whose peer never arrives gets an error within the timeout (the watchdog).
// All of it skips without a CUDA device or without NCCL in the build.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/ops.h"
#include "dist/communicator.h"
#include "tests/dist_spawn.h"
#include "tests/expect_error.h"

namespace kiln::dist {
namespace {

using namespace std::chrono_literals;
using kiln::testing::expect_error;

#ifdef KILN_WITH_NCCL

#define SKIP_WITHOUT_GPUS(n) \
  if (cuda_device_count() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA device(s)"

const Device kGpu0{DeviceType::CUDA, 0};

Tensor values(int64_t n, DType dt, int rank, Device dev) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>((i * 5 + rank * 3) % 19) - 9.0;
  return from_vector(v, {n}, {.dtype = dt, .device = dev});
}

TEST(NcclCuda, WorldSizeOneCollectives) {
  SKIP_WITHOUT_GPUS(1);
  auto comm = init_process_group({.backend = "nccl", .timeout = 30s}, kGpu0);
  EXPECT_EQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->world_size(), 1);
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64}) {
    const auto want = values(1001, dt, 0, kCPU).to_vector<double>();
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
      if (op == ReduceOp::avg && !is_floating(dt)) continue;
      // The input comes from a kernel on kiln's stream just before: the collective must wait for it.
      Tensor t = values(1001, dt, 0, kGpu0).clone();
      comm->all_reduce_async(t, op)->wait();
      EXPECT_EQ(t.cpu().to_vector<double>(), want) << dt << " op " << static_cast<int>(op);
    }
    Tensor b = values(33, dt, 0, kGpu0);
    comm->broadcast(b, 0);
    EXPECT_EQ(b.cpu().to_vector<double>(), values(33, dt, 0, kCPU).to_vector<double>());
    Tensor in = values(17, dt, 0, kGpu0);
    Tensor out = zeros({17}, {.dtype = dt, .device = kGpu0});
    comm->all_gather(out, in);
    EXPECT_EQ(out.cpu().to_vector<double>(), values(17, dt, 0, kCPU).to_vector<double>()) << dt;
    Tensor rs = zeros({17}, {.dtype = dt, .device = kGpu0});
    comm->reduce_scatter(rs, in);
    EXPECT_EQ(rs.cpu().to_vector<double>(), values(17, dt, 0, kCPU).to_vector<double>()) << dt;
  }
  comm->barrier();
  Tensor ints = ones({4}, {.dtype = DType::i32, .device = kGpu0});
  expect_error([&] { comm->all_reduce(ints, ReduceOp::avg); }, {"avg needs a floating dtype"});
  Tensor host = ones({4});
  expect_error([&] { comm->all_reduce(host); }, {"expects a tensor on cuda:0", "on cpu"});
}

TEST(NcclCuda, AsyncWorkOrdersLaterKernels) {
  SKIP_WITHOUT_GPUS(1);
  auto comm = init_process_group({.backend = "nccl", .timeout = 30s}, kGpu0);
  // Many large all-reduces in flight, then kernels that read the results after wait().
  std::vector<Tensor> ts;
  std::vector<std::shared_ptr<Work>> works;
  for (int k = 0; k < 6; ++k) {
    ts.push_back(full({1 << 22}, k + 1.0, {.device = kGpu0}));
    works.push_back(comm->all_reduce_async(ts.back()));
  }
  for (int k = 5; k >= 0; --k) {
    works[k]->wait();
    EXPECT_DOUBLE_EQ(sum(ts[k]).item(), (k + 1.0) * (1 << 22));
  }
}

// ---- two GPUs, two processes

TEST(NcclCudaWorker, TwoRanks) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  InitOptions o = options_from_env();
  o.backend = "nccl";
  const Device dev{DeviceType::CUDA, o.local_rank};
  auto comm = init_process_group(o, dev);
  const int rank = comm->rank();
  for (DType dt : {DType::f32, DType::bf16, DType::i64}) {
    Tensor t = values(1000, dt, rank, dev);
    comm->all_reduce(t);
    const auto a = values(1000, dt, 0, kCPU).to_vector<double>();
    const auto b = values(1000, dt, 1, kCPU).to_vector<double>();
    const auto got = t.cpu().to_vector<double>();
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(got[i], a[i] + b[i]) << dt << " element " << i;
  }
  Tensor out = zeros({2 * 10}, {.device = dev});
  comm->all_gather(out, full({10}, rank + 1.0, {.device = dev}));
  EXPECT_DOUBLE_EQ(sum(out).item(), 10.0 * (1 + 2));
  comm->barrier();
  if (std::getenv("KILN_TEST_PEER_NEVER_ARRIVES")) {
    if (rank == 1) {
      std::this_thread::sleep_for(8s);
      std::_Exit(::testing::Test::HasFailure() ? 1 : 0);  // its peer's communicator is aborted: no teardown
    }
    Tensor t = ones({1000}, {.device = dev});
    const auto t0 = std::chrono::steady_clock::now();
    comm->all_reduce_async(t);  // returns at once; the watchdog aborts it after the timeout
    expect_error([&] { comm->barrier(); }, {"all_reduce", "rank 0 of 2"});
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 6s);
  }
}

TEST(NcclCuda, TwoProcessesOnTwoGpus) {
  SKIP_WITHOUT_GPUS(2);
  EXPECT_EQ(kiln::testing::run_ranks("NcclCudaWorker.TwoRanks", 2), std::vector<int>(2, 0));
}

TEST(NcclCuda, WatchdogTurnsAMissingPeerIntoAnError) {
  SKIP_WITHOUT_GPUS(2);
  kiln::testing::RankOptions opts;
  opts.extra_env = [](int) {
    return std::vector<std::string>{"KILN_DIST_TIMEOUT_S=2", "KILN_TEST_PEER_NEVER_ARRIVES=1"};
  };
  EXPECT_EQ(kiln::testing::run_ranks("NcclCudaWorker.TwoRanks", 2, opts), std::vector<int>(2, 0));
}

#else

TEST(NcclCuda, NeedsAnNcclBuild) {
  expect_error([] { init_process_group({.backend = "nccl"}, Device(DeviceType::CUDA, 0)); },
               {"nccl backend is not available"});
}

#endif

}  // namespace
}  // namespace kiln::dist
