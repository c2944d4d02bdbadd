// Faults in a data-parallel run, through `kiln launch` and `kiln train` on Gloo: nothing hangs.
//   - a rank killed mid-run: every process gone, non-zero exit naming the rank, within 60 s
//   - a rank whose peers never come or whose master is unreachable: a clear error once
//     dist.timeout_s has passed; ranks that disagree on WORLD_SIZE: an error naming both, at once
//   - SIGINT to the launcher: every rank stops at the same step, rank 0 writes one checkpoint,
//     exit 130, and a resume with the same world size ends with the weights of a run that was
//     never interrupted.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/dist_run.h"
#include "tests/dist_spawn.h"
#include "tests/python_oracle.h"
#include "tools/io/checkpoint.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using kiln::testing::child_pids;
using kiln::testing::KilnRun;
using kiln::testing::kiln_binary;
using kiln::testing::process_exists;
using kiln::testing::run_kiln;

class DistFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kiln::testing::have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST not installed";
    dir_ = kiln::testing::make_temp_dir("kiln_dist_faults_");
    ASSERT_FALSE(dir_.empty());
    std::ofstream(dir_ / "c.yaml") << "device: cpu\nmodel:\n  hidden_sizes: [16]\ndata:\n  batch_size: 8\n  prefetch: 0\n"
                                   << "log:\n  tensorboard: false\n";
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  // kiln train on `nproc` ranks (one process without the launcher when nproc is 0).
  std::vector<std::string> train_args(int nproc, const std::string& run, std::vector<std::string> extra) const {
    extra.insert(extra.begin(), {"train.eval_every=0", "checkpoint.every=0"});
    return kiln::testing::train_args(nproc, dir_ / "c.yaml", dir_ / run, extra);
  }
  fs::path dir_;
};

TEST_F(DistFaults, KilledRankStopsTheJobWithinAMinute) {
  std::vector<pid_t> ranks;
  auto start = std::chrono::steady_clock::now();
  double killed_at = 0;
  const KilnRun r = run_kiln(train_args(3, "run", {"train.steps=100000", "train.log_every=1"}),
                             {.env = {"OMP_NUM_THREADS=1"},
                              .act_after = "step 3/",
                              .act = [&](pid_t launcher) {
                                ranks = child_pids(launcher);
                                if (ranks.size() == 3) kill(ranks[1], SIGKILL);
                                killed_at = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                              }});
  ASSERT_EQ(ranks.size(), 3u) << r.output;
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("killed by signal SIGKILL"), std::string::npos) << r.output;
  const double stop_s = r.seconds - killed_at;
  EXPECT_LT(stop_s, 60.0) << r.output;
  for (pid_t p : ranks) EXPECT_FALSE(process_exists(p)) << "rank process " << p << " is still there";
  std::printf("rank 1 SIGKILLed mid-run: launcher exited %d after %.2f s\n", r.exit_code, stop_s);
}

TEST_F(DistFaults, MissingPeersFailAfterTheTimeout) {
  // WORLD_SIZE says 2 but only rank 0 comes.
  const int port = kiln::testing::free_port();
  const KilnRun r = run_kiln(train_args(0, "run", {"train.steps=5", "dist.timeout_s=3"}),
                             {.env = {"RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=0", "MASTER_ADDR=127.0.0.1",
                                      "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"}});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << r.output;
  EXPECT_GE(r.seconds, 2.5) << r.output;
  EXPECT_LT(r.seconds, 30.0) << r.output;
  std::printf("rank 0 of 2 alone: exit %d after %.2f s (timeout 3 s): %s", r.exit_code, r.seconds,
              r.output.substr(r.output.find("error: ")).c_str());
}

TEST_F(DistFaults, MismatchedWorldSizesAreNamed) {
  // Two processes that disagree: rank 0 says 2 ranks, rank 1 says 3.
  const int port = kiln::testing::free_port();
  auto env = [&](int rank, int world) {
    return std::vector<std::string>{"RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(world),
                                    "LOCAL_RANK=" + std::to_string(rank), "MASTER_ADDR=127.0.0.1",
                                    "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"};
  };
  KilnRun r0, r1;
  std::thread t0([&] { r0 = run_kiln(train_args(0, "run0", {"train.steps=5", "dist.timeout_s=10"}), {.env = env(0, 2)}); });
  std::thread t1([&] { r1 = run_kiln(train_args(0, "run1", {"train.steps=5", "dist.timeout_s=10"}), {.env = env(1, 3)}); });
  t0.join();
  t1.join();
  for (const KilnRun* r : {&r0, &r1}) {
    EXPECT_EQ(r->exit_code, 1) << r->output;
    EXPECT_NE(r->output.find("error: "), std::string::npos) << r->output;
    EXPECT_LT(r->seconds, 30.0) << r->output;
  }
  // The error says what disagreed, with both sizes.
  const std::string both = r0.output + r1.output;
  EXPECT_NE(both.find("WORLD_SIZE"), std::string::npos) << both;
  EXPECT_TRUE(both.find(" 2") != std::string::npos && both.find(" 3") != std::string::npos) << both;
  std::printf("WORLD_SIZE 2 vs 3: exits %d/%d after %.2f/%.2f s: %s", r0.exit_code, r1.exit_code, r0.seconds,
              r1.seconds, both.substr(both.find("error: ")).c_str());
}

TEST_F(DistFaults, UnreachableMasterFailsAfterTheTimeout) {
  // Rank 1 of 2, and nobody serves the store at the master's port.
  const int port = kiln::testing::free_port();
  const KilnRun r = run_kiln(train_args(0, "run", {"train.steps=5", "dist.timeout_s=3"}),
                             {.env = {"RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "MASTER_ADDR=127.0.0.1",
                                      "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"}});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << r.output;
  EXPECT_GE(r.seconds, 2.5) << r.output;
  EXPECT_LT(r.seconds, 30.0) << r.output;
  std::printf("unreachable master: exit %d after %.2f s (timeout 3 s): %s", r.exit_code, r.seconds,
              r.output.substr(r.output.find("error: ")).c_str());
}

// The step a rank's log says it stopped at, or -1.
int64_t stopped_step(const fs::path& log) {
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  const size_t at = s.find(" at step ", s.find("stopped by "));
  if (s.find("stopped by ") == std::string::npos || at == std::string::npos) return -1;
  return std::stoll(s.substr(at + 9));
}

TEST_F(DistFaults, SigintCheckpointsEveryRankConsistentlyAndResumesExactly) {
  constexpr int kSteps = 60;
  for (const std::string zero : {"0", "1"}) {
    SCOPED_TRACE("dist.zero=" + zero);
    const std::vector<std::string> extra = {"train.steps=" + std::to_string(kSteps), "train.log_every=1",
                                            "dist.zero=" + zero};
    const std::string full = "full" + zero, cut = "cut" + zero;
    const KilnRun straight = run_kiln(train_args(2, full, extra), {.env = {"OMP_NUM_THREADS=1"}});
    ASSERT_EQ(straight.exit_code, 0) << straight.output;

    const KilnRun stopped = run_kiln(train_args(2, cut, extra), {.env = {"OMP_NUM_THREADS=1"},
                                                                  .act_after = "step 5/",
                                                                  .act = [](pid_t launcher) { kill(launcher, SIGINT); }});
    EXPECT_EQ(stopped.exit_code, 130) << stopped.output;
    const auto ckpts = io::list_checkpoints(dir_ / cut / "checkpoints");
    ASSERT_EQ(ckpts.size(), 1u) << stopped.output;
    const int64_t at = ckpts[0].first;
    EXPECT_GE(at, 5);
    ASSERT_LT(at, kSteps) << "the run finished before SIGINT took effect";
    // Both ranks stopped at the checkpoint's step.
    EXPECT_EQ(stopped_step(dir_ / cut / "train.log"), at) << stopped.output;
    EXPECT_EQ(stopped_step(dir_ / cut / "train.rank1.log"), at) << stopped.output;

    std::vector<std::string> resume = extra;
    resume.push_back("train.resume=auto");
    const KilnRun resumed = run_kiln(train_args(2, cut, resume), {.env = {"OMP_NUM_THREADS=1"}});
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
    const double diff = kiln::testing::max_weight_diff(io::checkpoint_path(dir_ / full / "checkpoints", kSteps),
                                                       io::checkpoint_path(dir_ / cut / "checkpoints", kSteps));
    EXPECT_EQ(diff, 0.0);
    std::printf("dist.zero=%s: SIGINT at step %lld, resumed to %d: max |w - w_uninterrupted| = %.3g\n", zero.c_str(),
                static_cast<long long>(at), kSteps, diff);
  }
}

}  // namespace
}  // namespace kiln
