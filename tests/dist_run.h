// What the data-parallel tests add to tests/kiln_cli.h (running the kiln binary): the dataset
// check, a process's children, and the model weights of a run's checkpoint.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/kiln_cli.h"
#include "tools/io/checkpoint.h"

namespace kiln::testing {

inline const char* kFashionMnist = "/usr/share/datasets/fashion-mnist";
inline bool have_fashion_mnist() {
  return std::filesystem::exists(std::filesystem::path(kFashionMnist) / "train-images-idx3-ubyte.gz");
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

// The arguments of `kiln train CONFIG log.run_dir=RUN_DIR OVERRIDES...`: one process when nproc
// is 0, else nproc ranks under `kiln launch` on a free port.
inline std::vector<std::string> train_args(int nproc, const std::filesystem::path& config,
                                           const std::filesystem::path& run_dir,
                                           const std::vector<std::string>& overrides) {
  std::vector<std::string> args;
  if (nproc > 0) args = {"launch", "--nproc", std::to_string(nproc), "--master-port", "0", kiln_binary()};
  args.insert(args.end(), {"train", config.string(), "log.run_dir=" + run_dir.string()});
  args.insert(args.end(), overrides.begin(), overrides.end());
  return args;
}

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
