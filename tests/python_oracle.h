// Running a Python reference (PyTorch, numpy, safetensors, tensorboard) from a test: check
// that an interpreter can import what the script needs (else the test skips, saying why),
// make a scratch directory, run the script and collect its output.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

namespace kiln::testing {

// Debian's interpreter, where python3-torch (PyTorch 1.13) lives.
inline const std::string kSystemPython = "/usr/bin/python3";
inline const std::string kSystemPythonHint = "scripts/setup.sh installs python3-torch";

// Why `python` cannot run a script that imports `modules` ("torch", "torch, numpy"), or an
// empty string when it can. `hint` says how to get them.
inline std::string python_unavailable(const std::string& python, const std::string& modules,
                                      const std::string& hint = kSystemPythonHint) {
  if (access(python.c_str(), X_OK) != 0) return python + " not found (" + hint + ")";
  const std::string probe = "'" + python + "' -c 'import " + modules + "' >/dev/null 2>&1";
  if (std::system(probe.c_str()) != 0) return python + " cannot import " + modules + " (" + hint + ")";
  return "";
}

// tests/parity/<name>, found through KILN_SOURCE_DIR (ctest sets it) or the working directory.
inline std::filesystem::path parity_script(const std::string& name) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  return std::filesystem::path(src ? src : ".") / "tests" / "parity" / name;
}

// A new, empty directory <temp>/<prefix>XXXXXX; an empty path when it cannot be made.
inline std::filesystem::path make_temp_dir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) return {};
  return tmpl;
}

// Removes `dir` (from make_temp_dir) after a test; when the current test has failed, keeps it
// and says where, since the reference files in it are what one looks at next.
inline void remove_temp_dir_unless_failed(const std::filesystem::path& dir) {
  if (dir.empty()) return;
  if (::testing::Test::HasFailure()) {
    std::cout << "reference files kept in " << dir.string() << "\n";
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
}

struct CommandResult {
  bool ok = false;      // it ran and exited with status 0
  int exit_code = -1;   // its exit status; 128 + N when signal N ended it; -1 when it did not run
  std::string output;   // its standard output (add 2>&1 to the command for stderr too)
  std::string failure;  // when !ok: the command, its exit status and its output
};

// Runs `command` through the shell and waits for it.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    r.failure = "cannot run " + command;
    return r;
  }
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
  r.ok = status == 0;
  if (!r.ok) r.failure = command + " failed (status " + std::to_string(r.exit_code) + "):\n" + r.output;
  return r;
}

}  // namespace kiln::testing
