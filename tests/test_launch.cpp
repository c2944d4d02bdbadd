// `kiln launch` through the built binary, with small shell commands as the ranks: each rank's
// environment, prefixed output, a failing rank stopping the others quickly, SIGINT forwarding.
#include <gtest/gtest.h>
#include <signal.h>

#include <sstream>
#include <string>
#include <vector>

#include "tests/kiln_cli.h"

namespace kiln {
namespace {

using Launched = testing::KilnRun;

// Runs kiln with `args` (no shell between); with `signal_after`, sends `sig` once that text has
// appeared `signal_count` times.
Launched run_kiln(const std::vector<std::string>& args, const std::string& signal_after = "",
                  int sig = SIGINT, int signal_count = 1) {
  testing::KilnRunOptions o;
  if (!signal_after.empty()) {
    o.act_after = signal_after;
    o.act_count = signal_count;
    o.act = [sig](pid_t pid) { kill(pid, sig); };
  }
  return testing::run_kiln(args, o);
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

TEST(Launch, SetsTorchrunEnvironmentPerRank) {
  const Launched r = run_kiln({"launch", "--nproc", "3", "--backend", "gloo", "--master-addr", "127.0.0.1",
                               "--master-port", "29123", "sh", "-c",
                               "echo R=$RANK W=$WORLD_SIZE L=$LOCAL_RANK LW=$LOCAL_WORLD_SIZE "
                               "A=$MASTER_ADDR P=$MASTER_PORT B=$KILN_DIST_BACKEND"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int rank = 0; rank < 3; ++rank) {
    const std::string want = "[rank " + std::to_string(rank) + "] R=" + std::to_string(rank) + " W=3 L=" +
                             std::to_string(rank) + " LW=3 A=127.0.0.1 P=29123 B=gloo";
    EXPECT_TRUE(contains(r.output, want)) << "missing '" << want << "' in\n" << r.output;
  }
}

TEST(Launch, SecondNodeNumbersItsRanksAfterTheFirst) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "--nnodes", "2", "--node-rank", "1", "sh", "-c",
                               "echo R=$RANK W=$WORLD_SIZE L=$LOCAL_RANK LW=$LOCAL_WORLD_SIZE"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 2] R=2 W=4 L=0 LW=2")) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 3] R=3 W=4 L=1 LW=2")) << r.output;
}

TEST(Launch, FreePortIsTheSameForEveryRank) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "--master-port", "0", "sh", "-c", "echo P=$MASTER_PORT"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::string> ports;
  for (const std::string& l : lines_of(r.output))
    if (contains(l, "P=")) ports.push_back(l.substr(l.find("P=")));
  ASSERT_EQ(ports.size(), 2u) << r.output;
  EXPECT_EQ(ports[0], ports[1]);
  EXPECT_NE(ports[0], "P=0");
}

TEST(Launch, EveryLineIsPrefixedWithItsRank) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "sh", "-c",
                               "echo one; echo two >&2; echo three; printf 'no newline'"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int lines = 0;
  for (const std::string& l : lines_of(r.output)) {
    ++lines;
    EXPECT_EQ(l.rfind("[rank ", 0), 0u) << "unprefixed line '" << l << "' in\n" << r.output;
  }
  EXPECT_EQ(lines, 8) << r.output;
  for (const char* want : {"[rank 0] one", "[rank 1] two", "[rank 0] three", "[rank 1] no newline"})
    EXPECT_TRUE(contains(r.output, want)) << want << " missing in\n" << r.output;
}

TEST(Launch, CommandFlagsPassThrough) {
  const Launched r = run_kiln({"launch", "--nproc", "1", "printf", "%s|%s|%s\\n", "--nproc", "5", "--help"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 0] --nproc|5|--help")) << r.output;
  const Launched dashes = run_kiln({"launch", "--nproc", "1", "--", "printf", "%s\\n", "--version"});
  EXPECT_TRUE(contains(dashes.output, "[rank 0] --version")) << dashes.output;
}

TEST(Launch, FailingRankStopsTheOthersFast) {
  // Rank 1 fails after a moment; the others would sleep for a minute.
  const Launched r = run_kiln({"launch", "--nproc", "3", "sh", "-c",
                               "if [ $RANK = 1 ]; then sleep 0.3; exit 3; fi; sleep 60"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 1")) << r.output;
  EXPECT_TRUE(contains(r.output, "exited with status 3")) << r.output;
  EXPECT_LT(r.seconds, 5.0) << r.output;
  std::printf("failing rank -> launcher exit: %.2f s\n", r.seconds);
}

TEST(Launch, RanksIgnoringSigtermAreKilledAfterTheGracePeriod) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "--grace-s", "1", "sh", "-c",
                               "trap '' TERM; if [ $RANK = 0 ]; then sleep 0.3; exit 2; fi; sleep 60"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 0")) << r.output;
  EXPECT_TRUE(contains(r.output, "SIGKILL")) << r.output;
  EXPECT_LT(r.seconds, 10.0) << r.output;
  std::printf("rank ignoring SIGTERM, grace 1 s -> launcher exit: %.2f s\n", r.seconds);
}

TEST(Launch, RankKilledBySignalIsNamed) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "sh", "-c",
                               "if [ $RANK = 1 ]; then kill -9 $$; fi; sleep 60"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 1")) << r.output;
  EXPECT_TRUE(contains(r.output, "killed by signal SIGKILL")) << r.output;
  EXPECT_LT(r.seconds, 10.0) << r.output;
}

TEST(Launch, SigintIsForwardedToEveryRank) {
  const Launched r = run_kiln({"launch", "--nproc", "2", "sh", "-c",
                               "trap 'echo got INT; exit 130' INT; echo ready; "
                               "while true; do sleep 0.05; done"},
                              "ready", SIGINT, 2);
  EXPECT_EQ(r.exit_code, 130) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 0] got INT")) << r.output;
  EXPECT_TRUE(contains(r.output, "[rank 1] got INT")) << r.output;
  EXPECT_FALSE(contains(r.output, "stopping the other ranks")) << r.output;  // not a failure
}

TEST(Launch, BadArgumentsFailClearly) {
  const Launched none = run_kiln({"launch", "--nproc", "2"});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_TRUE(contains(none.output, "command is required")) << none.output;
  const Launched zero = run_kiln({"launch", "--nproc", "0", "true"});
  EXPECT_NE(zero.exit_code, 0);
  EXPECT_TRUE(contains(zero.output, "--nproc must be >= 1")) << zero.output;
  const Launched missing = run_kiln({"launch", "--nproc", "1", "/nonexistent/command"});
  EXPECT_EQ(missing.exit_code, 127) << missing.output;
  EXPECT_TRUE(contains(missing.output, "cannot run /nonexistent/command")) << missing.output;
}

}  // namespace
}  // namespace kiln
