// The Gloo backend across 2 and 3 processes on 127.0.0.1: every collective and dtype against
// a local computation of the expected result (each rank's input is a function of its rank),
// async ordering, and errors (a peer that never arrives, a peer that exits, a world size
// mismatch, a rendezvous nobody joins) that must come within the timeout, never as a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <thread>

#include "dist/communicator.h"
#include "tests/dist_spawn.h"
#include "tests/expect_error.h"

namespace kiln::dist {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using kiln::testing::expect_error;
using kiln::testing::run_ranks;

const DType kReduceTypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64};

// Small integers: exact in every dtype, and so are their sums over 3 ranks, whatever the order.
double input_value(int rank, int64_t i, int salt) {
  return static_cast<double>(((rank + 1) * (salt + 3) + i * 7) % 23) - 11.0;
}

Tensor rank_input(int rank, int64_t n, DType dt, int salt) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = input_value(rank, i, salt);
  return from_vector(v, {n}, {.dtype = dt});
}

// Relative tolerance of one rounding to dtype (avg rounds once after an exact sum).
double tol(DType dt) {
  switch (dt) {
    case DType::bf16: return 1.0 / 128;
    case DType::f16: return 1.0 / 1024;
    case DType::f32: return 1e-6;
    default: return 1e-12;
  }
}

void expect_values(const Tensor& got, const std::vector<double>& want, DType dt, const std::string& what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  const auto g = got.to_vector<double>();
  int bad = 0;
  for (size_t i = 0; i < want.size() && bad < 5; ++i) {
    const double err = std::abs(g[i] - want[i]);
    if (err > tol(dt) * std::max(1.0, std::abs(want[i]))) {
      ADD_FAILURE() << what << " " << dt << " element " << i << ": got " << g[i] << ", want " << want[i];
      ++bad;
    }
  }
}

std::unique_ptr<Communicator> init_from_env() {
  InitOptions o = options_from_env();
  o.backend = "gloo";
  return init_process_group(o, kCPU);
}

// ---- every collective x dtype ---------------------------------------------------------------

TEST(GlooWorker, Collectives) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  auto comm = init_from_env();
  const int rank = comm->rank(), n = comm->world_size();
  EXPECT_EQ(comm->backend(), "gloo");
  EXPECT_EQ(n, kiln::testing::env_int("WORLD_SIZE"));
  EXPECT_FALSE(comm->run_id().empty());

  for (DType dt : kReduceTypes) {
    // Odd sizes, and for f32 one over gloo's 1 MiB segment so the ring runs several rounds.
    for (int64_t numel : {int64_t{1}, int64_t{1001}, dt == DType::f32 ? int64_t{300001} : int64_t{5}}) {
      const std::string at = " numel " + std::to_string(numel);
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
        if (op == ReduceOp::avg && !is_floating(dt)) continue;
        Tensor t = rank_input(rank, numel, dt, 1);
        comm->all_reduce(t, op);
        std::vector<double> want(numel);
        for (int64_t i = 0; i < numel; ++i) {
          double acc = op == ReduceOp::max ? -1e300 : 0.0;
          for (int r = 0; r < n; ++r)
            acc = op == ReduceOp::max ? std::max(acc, input_value(r, i, 1)) : acc + input_value(r, i, 1);
          want[i] = op == ReduceOp::avg ? acc / n : acc;
        }
        expect_values(t, want, dt, "all_reduce op " + std::to_string(static_cast<int>(op)) + at);
      }
    }

    // broadcast from the last rank: everyone ends with its input.
    {
      Tensor t = rank_input(rank, 37, dt, 2);
      comm->broadcast(t, n - 1);
      std::vector<double> want(37);
      for (int64_t i = 0; i < 37; ++i) want[i] = input_value(n - 1, i, 2);
      expect_values(t, want, dt, "broadcast");
    }

    // all_gather: rank order.
    {
      const int64_t m = 13;
      Tensor in = rank_input(rank, m, dt, 3);
      Tensor out = zeros({n * m}, {.dtype = dt});
      comm->all_gather(out, in);
      std::vector<double> want;
      for (int r = 0; r < n; ++r)
        for (int64_t i = 0; i < m; ++i) want.push_back(input_value(r, i, 3));
      expect_values(out, want, dt, "all_gather");
    }

    // reduce_scatter: rank r keeps chunk r of the reduction.
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
      if (op == ReduceOp::avg && !is_floating(dt)) continue;
      const int64_t m = 11;
      Tensor in = rank_input(rank, n * m, dt, 4);
      Tensor out = zeros({m}, {.dtype = dt});
      comm->reduce_scatter(out, in, op);
      std::vector<double> want(m);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t j = rank * m + i;
        double acc = op == ReduceOp::max ? -1e300 : 0.0;
        for (int r = 0; r < n; ++r)
          acc = op == ReduceOp::max ? std::max(acc, input_value(r, j, 4)) : acc + input_value(r, j, 4);
        want[i] = op == ReduceOp::avg ? acc / n : acc;
      }
      expect_values(out, want, dt, "reduce_scatter op " + std::to_string(static_cast<int>(op)));
    }
  }

  // A 2-d tensor is reduced as its elements; an empty one is a no-op on every rank.
  Tensor mat = full({3, 4}, rank + 1.0);
  comm->all_reduce(mat);
  expect_values(mat, std::vector<double>(12, n * (n + 1) / 2.0), DType::f32, "2-d all_reduce");
  Tensor none = zeros({0});
  comm->all_reduce(none);

  // Checks on the arguments fail on the calling rank, before anything is sent, and leave the
  // communicator usable.
  Tensor ints = ones({4}, {.dtype = DType::i32});
  expect_error([&] { comm->all_reduce(ints, ReduceOp::avg); }, {"avg needs a floating dtype", "i32"});
  Tensor strided = zeros({4, 4}).t();
  expect_error([&] { comm->all_reduce(strided); }, "contiguous");
  Tensor out_bad = zeros({n * 2 + 1});
  expect_error([&] { comm->all_gather(out_bad, zeros({2})); }, {"all_gather", "f32[2]"});
  expect_error([&] { comm->broadcast(mat, n); }, {"root " + std::to_string(n)});
  Tensor bytes = zeros({2}, {.dtype = DType::u8});
  expect_error([&] { comm->all_reduce(bytes); }, {"unsupported dtype", "u8"});

  // barrier: rank r arrives after r * 300 ms, so nobody leaves before the last arrives.
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(300 * rank));
  comm->barrier();
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(300 * (n - 1) - 50));
  comm->barrier();
}

TEST(Gloo, CollectivesWorldSize2) { EXPECT_EQ(run_ranks("GlooWorker.Collectives", 2), std::vector<int>(2, 0)); }
TEST(Gloo, CollectivesWorldSize3) { EXPECT_EQ(run_ranks("GlooWorker.Collectives", 3), std::vector<int>(3, 0)); }

// ---- async: returns at once, runs in issue order, results right whatever order they're waited

TEST(GlooWorker, AsyncOrder) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  auto comm = init_from_env();
  const int rank = comm->rank(), n = comm->world_size();
  // The last rank joins 600 ms late; the others' async calls must not wait for it.
  if (rank == n - 1) std::this_thread::sleep_for(600ms);
  std::vector<Tensor> ts;
  std::vector<std::shared_ptr<Work>> works;
  const auto t0 = Clock::now();
  for (int k = 0; k < 8; ++k) {
    ts.push_back(full({1000 + k}, (rank + 1) * (k + 1.0)));
    works.push_back(comm->all_reduce_async(ts.back(), k % 2 ? ReduceOp::max : ReduceOp::sum));
  }
  const auto issued = Clock::now() - t0;
  if (rank != n - 1) EXPECT_LT(issued, 300ms) << "all_reduce_async blocked";
  // A blocking collective queued behind them runs after them.
  Tensor b = full({5}, rank == 0 ? 42.0 : -1.0);
  comm->broadcast(b, 0);
  EXPECT_EQ(b.to_vector<double>(), std::vector<double>(5, 42.0));
  for (int k = 7; k >= 0; --k) {
    works[k]->wait();
    works[k]->wait();  // waiting twice is fine
    const double want = k % 2 ? n * (k + 1.0) : (k + 1.0) * n * (n + 1) / 2.0;
    EXPECT_EQ(ts[k].to_vector<double>(), std::vector<double>(1000 + k, want)) << "all_reduce " << k;
  }
  if (rank != n - 1) EXPECT_GE(Clock::now() - t0, 500ms);
}

TEST(Gloo, AsyncOrder) { EXPECT_EQ(run_ranks("GlooWorker.AsyncOrder", 2), std::vector<int>(2, 0)); }

// ---- failures ---------------------------------------------------------------------------------

// Rank 1 never calls the all_reduce: rank 0 fails after the 2 s timeout, naming the collective
// and itself; its next collective fails at once.
TEST(GlooWorker, PeerNeverArrives) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  auto comm = init_from_env();
  comm->barrier();
  if (comm->rank() == 1) {
    std::this_thread::sleep_for(5s);
    return;
  }
  Tensor t = ones({1000});
  const auto t0 = Clock::now();
  expect_error([&] { comm->all_reduce(t); }, {"all_reduce(sum, f32[1000] on cpu)", "rank 0 of 2", "2 s"});
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 1500ms);
  EXPECT_LT(took, 4500ms);
  const auto t1 = Clock::now();
  expect_error([&] { comm->barrier(); }, {"barrier", "failed earlier"});
  EXPECT_LT(Clock::now() - t1, 500ms);
}

TEST(Gloo, PeerNeverArrivesTimesOut) {
  kiln::testing::RankOptions opts;
  opts.extra_env = [](int) { return std::vector<std::string>{"KILN_DIST_TIMEOUT_S=2"}; };
  EXPECT_EQ(run_ranks("GlooWorker.PeerNeverArrives", 2, opts), std::vector<int>(2, 0));
}

// The last rank exits after connecting: the others' all_reduce fails instead of waiting out a
// long timeout, and with two ranks the error names the peer.
TEST(GlooWorker, PeerExits) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  auto comm = init_from_env();
  const int rank = comm->rank(), n = comm->world_size();
  comm->barrier();
  if (rank == n - 1) std::_Exit(0);  // no clean shutdown, as a crash
  std::this_thread::sleep_for(300ms);
  Tensor t = ones({1000});
  const auto t0 = Clock::now();
  const std::string me = "rank " + std::to_string(rank) + " of " + std::to_string(n);
  if (n == 2)
    expect_error([&] { comm->all_reduce(t); }, {"all_reduce", me, "is rank 1"});
  else
    expect_error([&] { comm->all_reduce(t); }, {"all_reduce", me});
  EXPECT_LT(Clock::now() - t0, 20s);
}

TEST(Gloo, PeerExitIsAnError) {
  kiln::testing::RankOptions opts;
  opts.extra_env = [](int) { return std::vector<std::string>{"KILN_DIST_TIMEOUT_S=30"}; };
  EXPECT_EQ(run_ranks("GlooWorker.PeerExits", 2, opts), std::vector<int>(2, 0));
  EXPECT_EQ(run_ranks("GlooWorker.PeerExits", 3, opts), std::vector<int>(3, 0));
}

TEST(GlooWorker, WorldSizeMismatch) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  const int rank = kiln::testing::env_int("RANK");
  if (rank == 1)
    expect_error([&] { init_from_env(); }, {"WORLD_SIZE mismatch", "rank 1 declared 3", "rank 0 declared 2"});
  else
    expect_error([&] { init_from_env(); }, {"another rank", "rank 1 declared 3"});
}

TEST(Gloo, WorldSizeMismatchIsReportedOnBothRanks) {
  kiln::testing::RankOptions opts;
  opts.extra_env = [](int r) {
    return std::vector<std::string>{"KILN_DIST_TIMEOUT_S=10", "WORLD_SIZE=" + std::to_string(r == 1 ? 3 : 2)};
  };
  EXPECT_EQ(run_ranks("GlooWorker.WorldSizeMismatch", 2, opts), std::vector<int>(2, 0));
}

// ---- in one process ---------------------------------------------------------------------------

TEST(Gloo, RendezvousNobodyJoinsTimesOut) {
  InitOptions o{.backend = "gloo", .rank = 0, .world_size = 2, .master_port = kiln::testing::free_port(),
                .timeout = 1s};
  const auto t0 = Clock::now();
  expect_error([&] { init_process_group(o, kCPU); }, {"only 1 of 2 ranks joined", "1 s", "rank 0 of 2"});
  EXPECT_LT(Clock::now() - t0, 4s);
}

TEST(Gloo, WorldSizeOneNeedsNoRendezvous) {
  auto comm = init_process_group({.backend = "gloo"}, kCPU);
  EXPECT_EQ(comm->world_size(), 1);
  Tensor t = from_vector(std::vector<double>{1, -2, 3}, {3});
  comm->all_reduce(t, ReduceOp::avg);
  EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{1, -2, 3}));
  Tensor out = zeros({3});
  comm->all_gather(out, t);
  EXPECT_EQ(out.to_vector<double>(), (std::vector<double>{1, -2, 3}));
  comm->reduce_scatter(out, t);
  EXPECT_EQ(out.to_vector<double>(), (std::vector<double>{1, -2, 3}));
  comm->broadcast(t, 0);
  comm->barrier();
}

TEST(Gloo, BackendChoiceErrors) {
  expect_error([&] { init_process_group({.backend = "mpi"}, kCPU); }, {"unknown distributed backend 'mpi'"});
  expect_error([&] { init_process_group({.backend = "nccl"}, kCPU); }, {"nccl backend needs a CUDA device"});
  EXPECT_EQ(init_process_group({.backend = "auto"}, kCPU)->backend(), "gloo");
}

// Sets environment variables for one test and restores them after.
class EnvGuard {
 public:
  void set(const char* name, const char* value) {
    const char* old = std::getenv(name);
    saved_.push_back({name, old ? std::optional<std::string>(old) : std::nullopt});
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~EnvGuard() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) setenv(it->first.c_str(), it->second->c_str(), 1); else unsetenv(it->first.c_str());
    }
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST(Dist, OptionsFromEnv) {
  {
    EnvGuard env;
    for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "KILN_DIST_TIMEOUT_S"})
      env.set(v, nullptr);
    InitOptions o = options_from_env();
    EXPECT_EQ(o.rank, 0);
    EXPECT_EQ(o.world_size, 1);
    EXPECT_EQ(o.master_port, 29500);
  }
  {
    EnvGuard env;
    env.set("RANK", "2");
    env.set("WORLD_SIZE", "4");
    env.set("LOCAL_RANK", "0");
    env.set("MASTER_ADDR", "10.1.2.3");
    env.set("MASTER_PORT", "1234");
    env.set("KILN_DIST_TIMEOUT_S", "2.5");
    InitOptions o = options_from_env();
    EXPECT_EQ(o.rank, 2);
    EXPECT_EQ(o.world_size, 4);
    EXPECT_EQ(o.local_rank, 0);
    EXPECT_EQ(o.master_addr, "10.1.2.3");
    EXPECT_EQ(o.master_port, 1234);
    EXPECT_EQ(o.timeout, 2500ms);
    env.set("RANK", "4");
    expect_error([] { options_from_env(); }, {"RANK=4", "outside 0..3"});
    env.set("RANK", "x");
    expect_error([] { options_from_env(); }, {"RANK='x' is not an integer"});
    env.set("RANK", nullptr);
    expect_error([] { options_from_env(); }, {"RANK is not set"});
    env.set("RANK", "1");
    env.set("KILN_DIST_TIMEOUT_S", "-1");
    expect_error([] { options_from_env(); }, {"KILN_DIST_TIMEOUT_S='-1'"});
  }
}

}  // namespace
}  // namespace kiln::dist
