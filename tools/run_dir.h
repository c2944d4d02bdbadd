// A run's directory: runs/<name>-<YYYYmmdd-HHMMSS>/ holding config.yaml, metrics.jsonl,
// TensorBoard events, checkpoints/ and train.log.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

namespace kiln {

// The directory for a new run, or `exact` when given (made if missing).
std::filesystem::path make_run_dir(const std::string& base, const std::string& name,
                                   const std::string& exact);

// Writes every line to the terminal and to train.log in the run directory.
class RunLog {
 public:
  // to_terminal false: the file only (the other ranks of a data-parallel run).
  explicit RunLog(const std::filesystem::path& file, bool to_terminal = true);
  void line(const std::string& text);           // terminal + file
  void file_only(const std::string& text);      // file
 private:
  std::ofstream file_;
  bool to_terminal_ = true;
};

}  // namespace kiln
