#include "tools/run_dir.h"

#include <chrono>
#include <ctime>
#include <iostream>

#include "core/error.h"

namespace kiln {

std::filesystem::path make_run_dir(const std::string& base, const std::string& name,
                                   const std::string& exact) {
  namespace fs = std::filesystem;
  fs::path dir;
  if (!exact.empty()) {
    dir = exact;
  } else {
    const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
    dir = fs::path(base) / (name + "-" + stamp);
    // Two runs started in the same second get distinct directories.
    for (int i = 2; fs::exists(dir); ++i) dir = fs::path(base) / (name + "-" + stamp + "-" + std::to_string(i));
  }
  std::error_code ec;
  fs::create_directories(dir / "checkpoints", ec);
  KILN_CHECK(!ec, "cannot create run directory ", dir.string(), ": ", ec.message());
  return dir;
}

RunLog::RunLog(const std::filesystem::path& file, bool to_terminal)
    : file_(file, std::ios::app), to_terminal_(to_terminal) {
  KILN_CHECK(file_.good(), "cannot open log file ", file.string());
}

void RunLog::line(const std::string& text) {
  if (to_terminal_) std::cout << text << std::endl;
  file_only(text);
}

void RunLog::file_only(const std::string& text) { file_ << text << '\n' << std::flush; }

}  // namespace kiln
