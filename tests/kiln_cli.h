// Running the built kiln binary (KILN_BUILD_DIR/kiln; ctest sets KILN_BUILD_DIR) from a test:
// either an argument list without a shell, with an optional action (a signal) once a given text
// has appeared, or a command line through the shell. Output is stdout and stderr together.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "tests/python_oracle.h"

namespace kiln::testing {

inline std::string kiln_binary() {
  const char* build = std::getenv("KILN_BUILD_DIR");
  return std::string(build ? build : "build") + "/kiln";
}

struct KilnRun {
  int exit_code = -1;      // 128 + N for a signal
  bool signalled = false;  // a signal ended it (exit_code is then 128 + N)
  std::string output;      // stdout and stderr together
  double seconds = 0;
  pid_t pid = -1;
};

struct KilnRunOptions {
  std::vector<std::string> env;          // extra NAME=value entries
  std::string act_after;                 // once this text has appeared `act_count` times...
  int act_count = 1;
  std::function<void(pid_t)> act;        // ...call this with kiln's pid
};

// Runs `kiln args...` (no shell between) and waits for it.
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
  r.signalled = WIFSIGNALED(status);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Runs `kiln ARGS 2>&1` through the shell, so ARGS may quote ("--text 'the earth'").
inline CommandResult run_kiln_shell(const std::string& args) {
  return run_command(kiln_binary() + " " + args + " 2>&1");
}

}  // namespace kiln::testing
