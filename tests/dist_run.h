// Running the kiln binary (kiln launch, kiln train) from the data-parallel tests: argument lists
// without a shell, output collected, an optional signal once a given text has appeared, the
// time it took, and the model weights of a run's checkpoint.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "tools/io/checkpoint.h"

namespace kiln::testing {

inline std::string kiln_binary() {
  const char* build = std::getenv("KILN_BUILD_DIR");
  return std::string(build ? build : "build") + "/kiln";
}

inline const char* kFashionMnist = "/usr/share/datasets/fashion-mnist";
inline bool have_fashion_mnist() {
  return std::filesystem::exists(std::filesystem::path(kFashionMnist) / "train-images-idx3-ubyte.gz");
}

struct KilnRun {
  int exit_code = -1;  // 128 + N for a signal
  std::string output;  // stdout and stderr together
  double seconds = 0;
  pid_t pid = -1;
};

struct KilnRunOptions {
  std::vector<std::string> env;          // extra NAME=value entries
  std::string act_after;                 // once this text has appeared `act_count` times...
  int act_count = 1;
  std::function<void(pid_t)> act;        // ...call this with kiln's pid
};

// Runs `kiln args...` and waits for it.
inline KilnRun run_kiln(const std::vector<std::string>& args, const KilnRunOptions& o = {}) {
  KilnRun r;
  int out[2];
  if (pipe(out) != 0) return r;
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    close(out[0]);
    for (const std::string& e : o.env) {
      const size_t eq = e.find('=');
      setenv(e.substr(0, eq).c_str(), e.substr(eq + 1).c_str(), 1);
    }
    std::vector<std::string> all = {kiln_binary()};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  r.pid = pid;
  bool acted = !o.act;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) {
    r.output.append(buf, static_cast<size_t>(n));
    if (!acted) {
      int seen = 0;
      for (size_t at = 0; (at = r.output.find(o.act_after, at)) != std::string::npos; ++at) ++seen;
      if (seen >= o.act_count) {
        o.act(pid);
        acted = true;
      }
    }
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// The children of process `pid`, oldest first (Linux: /proc/<pid>/task/<pid>/children).
inline std::vector<pid_t> child_pids(pid_t pid) {
  std::vector<pid_t> out;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children").c_str(), "r");
  if (!f) return out;
  for (long p; std::fscanf(f, "%ld", &p) == 1;) out.push_back(static_cast<pid_t>(p));
  std::fclose(f);
  return out;
}

inline bool process_exists(pid_t pid) { return kill(pid, 0) == 0; }

// The largest |a - b| over the model tensors of two checkpoints (infinity when they differ in
// names or shapes).
inline double max_weight_diff(const std::filesystem::path& a, const std::filesystem::path& b) {
  const io::CheckpointContents ca = io::load_checkpoint(a), cb = io::load_checkpoint(b);
  if (ca.model.size() != cb.model.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < ca.model.size(); ++i) {
    if (ca.model[i].first != cb.model[i].first || ca.model[i].second.shape() != cb.model[i].second.shape())
      return INFINITY;
    const auto x = ca.model[i].second.to_vector<double>(), y = cb.model[i].second.to_vector<double>();
    for (size_t k = 0; k < x.size(); ++k) m = std::max(m, std::abs(x[k] - y[k]));
  }
  return m;
}

}  // namespace kiln::testing
