#include "tools/io/jsonl.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "core/error.h"

namespace kiln::io {
namespace fs = std::filesystem;

JsonlWriter::JsonlWriter(const fs::path& path, Mode mode) : path_(path) {
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    KILN_CHECK(!ec, "cannot create the directory of ", path.string(), ": ", ec.message());
  }
  // O_APPEND makes each write() land at the end even if another process appends too.
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (mode == Mode::append ? O_APPEND : O_TRUNC);
  fd_ = ::open(path.c_str(), flags, 0644);
  KILN_CHECK(fd_ >= 0, "cannot open ", path.string(), " for writing: ", std::strerror(errno));
}

JsonlWriter::~JsonlWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void JsonlWriter::write(const nlohmann::json& record) {
  KILN_CHECK(record.is_object(), path_.string(), ": a metrics line must be a JSON object, got ",
             record.type_name());
  std::string line;
  try {
    line = record.dump() + '\n';
  } catch (const nlohmann::json::exception& err) {
    KILN_FAIL(path_.string(), ": cannot encode a metrics line: ", err.what());
  }
  const char* p = line.data();
  std::size_t n = line.size();
  while (n > 0) {  // regular files take the whole line at once; the loop is for signals
    const ssize_t done = ::write(fd_, p, n);
    if (done < 0 && errno == EINTR) continue;
    KILN_CHECK(done > 0, "cannot write ", path_.string(), ": ", std::strerror(errno));
    p += done;
    n -= static_cast<std::size_t>(done);
  }
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::ifstream in(path);
  KILN_CHECK(in, "cannot open ", path.string(), ": ", std::strerror(errno));
  std::vector<nlohmann::json> records;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& err) {
      KILN_FAIL(path.string(), ":", number, ": not valid JSON: ", err.what());
    }
    KILN_CHECK(record.is_object(), path.string(), ":", number, ": expected a JSON object, got ",
               record.type_name());
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace kiln::io
