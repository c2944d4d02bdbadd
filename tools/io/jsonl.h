// metrics.jsonl: one JSON object per line, e.g. {"step": 100, "train/loss": 0.41, "lr": 3e-4}.
// Each line goes to the OS in one write() as soon as it is logged, so a crashed run keeps every
// line up to the crash and a tool tailing the file never sees half a line.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

namespace kiln::io {

class JsonlWriter {
 public:
  enum class Mode { append, truncate };
  // Appends by default: a resumed run adds to the log of the run it continues.
  explicit JsonlWriter(const std::filesystem::path& path, Mode mode = Mode::append);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;

  // `record` must be a JSON object. Non-finite numbers are written as null (JSON has no NaN).
  void write(const nlohmann::json& record);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Every line of a .jsonl file, each an object; errors name the file and line. Blank lines are
// skipped.
std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path);

}  // namespace kiln::io
