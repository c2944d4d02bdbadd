// Multi-process tests on one machine: run N copies of the current test binary as ranks of one
// job, each with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1,
// MASTER_PORT) and --gtest_filter naming a worker test. The copies are exec'ed (posix_spawn of
// /proc/self/exe), not fork()ed: forking a process whose OpenMP or store threads already run
// would copy their locks in whatever state they were.
//
//   TEST(DistWorker, Sum) { if (!kiln::testing::is_dist_worker()) GTEST_SKIP(); ... }
//   TEST(Dist, Sum) { EXPECT_EQ(run_ranks("DistWorker.Sum", 2), std::vector<int>(2, 0)); }
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace kiln::testing {

// Set in the spawned ranks; worker tests skip without it.
inline bool is_dist_worker() { return std::getenv("KILN_DIST_WORKER") != nullptr; }

inline int env_int(const char* name, int fallback = 0) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

// A port nothing listens on right now: bind port 0, read what the kernel chose, release it.
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct RankOptions {
  int port = 0;  // 0: a free port
  // Extra "NAME=value" entries for one rank (they replace inherited ones of the same name).
  std::function<std::vector<std::string>(int rank)> extra_env;
  std::vector<std::string> args;  // extra command-line arguments, after the first ones
  std::chrono::seconds limit{90};  // ranks still running after this are killed (exit code -1)
};

// Runs `world_size` copies of this binary with arguments `args` (and options.args) and returns
// their exit codes in rank order (128+N for a signal, -1 for killed at the limit).
inline std::vector<int> spawn_ranks(const std::vector<std::string>& first_args, int world_size,
                                    const RankOptions& options = {}) {
  const int port = options.port ? options.port : free_port();
  std::vector<pid_t> pids(world_size, -1);
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::string> env = {
        "KILN_DIST_WORKER=1", "RANK=" + std::to_string(r), "LOCAL_RANK=" + std::to_string(r),
        "WORLD_SIZE=" + std::to_string(world_size), "MASTER_ADDR=127.0.0.1",
        "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"};
    auto name_of = [](const std::string& e) { return e.substr(0, e.find('=')); };
    if (options.extra_env) {
      for (std::string& extra : options.extra_env(r)) {
        std::erase_if(env, [&](const std::string& e) { return name_of(e) == name_of(extra); });
        env.push_back(std::move(extra));
      }
    }
    for (char** e = environ; *e; ++e) {
      const std::string entry = *e;
      bool replaced = false;
      for (const std::string& mine : env) replaced = replaced || name_of(mine) == name_of(entry);
      if (!replaced && entry.rfind("GTEST_", 0) != 0) env.push_back(entry);
    }
    std::vector<std::string> args = {"/proc/self/exe"};
    args.insert(args.end(), first_args.begin(), first_args.end());
    args.insert(args.end(), options.args.begin(), options.args.end());
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    if (posix_spawn(&pids[r], "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data()) != 0)
      pids[r] = -1;
  }
  std::vector<int> codes(world_size, -1);
  std::vector<bool> done(world_size, false);
  const auto deadline = std::chrono::steady_clock::now() + options.limit;
  for (int left = world_size; left > 0;) {
    for (int r = 0; r < world_size; ++r) {
      if (done[r]) continue;
      int status = 0;
      if (pids[r] < 0 || waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        done[r] = true;
        --left;
        if (pids[r] >= 0)
          codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    if (left == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < world_size; ++r)
        if (!done[r]) { kill(pids[r], SIGKILL); waitpid(pids[r], nullptr, 0); }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return codes;
}

// Runs `world_size` ranks of this test binary restricted to the worker test `gtest_filter`.
inline std::vector<int> run_ranks(const std::string& gtest_filter, int world_size,
                                  const RankOptions& options = {}) {
  return spawn_ranks({"--gtest_filter=" + gtest_filter}, world_size, options);
}

}  // namespace kiln::testing
