// POSIX calls rather than iostreams: iostreams cannot fsync, and their errors carry no errno.
#include "tools/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.h"

namespace kiln::io {
namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

fs::path directory_of(const fs::path& file) {
  fs::path dir = file.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(fs::path target) : target_(std::move(target)) {
  KILN_CHECK(!target_.empty() && target_.has_filename(), "atomic write: '", target_.string(),
             "' is not a file path");
  temp_ = target_;
  temp_ += ".tmp." + std::to_string(::getpid());
  // O_TRUNC rather than O_EXCL: a temporary left by a crashed process with the same pid (pid 1
  // in every container) must not block writes forever.
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KILN_CHECK(fd_ >= 0, "cannot create ", temp_.string(), " (to write ", target_.string(), "): ",
             errno_text());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());  // best effort: a destructor must not throw
}

void AtomicFileWriter::write(const void* data, std::size_t n) {
  KILN_CHECK(fd_ >= 0 && !committed_, "write to ", target_.string(), " after commit()");
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t done = ::write(fd_, p, n);
    if (done < 0 && errno == EINTR) continue;
    KILN_CHECK(done > 0, "cannot write ", temp_.string(), " (for ", target_.string(), "): ",
               done < 0 ? errno_text() : std::string("no progress"));
    p += done;
    n -= static_cast<std::size_t>(done);
  }
}

void AtomicFileWriter::commit() {
  KILN_CHECK(fd_ >= 0 && !committed_, "commit() of ", target_.string(), " twice");
  KILN_CHECK(::fsync(fd_) == 0, "cannot fsync ", temp_.string(), ": ", errno_text());
  const int rc = ::close(fd_);
  fd_ = -1;
  KILN_CHECK(rc == 0, "cannot close ", temp_.string(), ": ", errno_text());
  KILN_CHECK(::rename(temp_.c_str(), target_.c_str()) == 0, "cannot rename ", temp_.string(),
             " to ", target_.string(), ": ", errno_text());
  committed_ = true;
  sync_directory(directory_of(target_));
}

void write_file_atomic(const fs::path& path, std::string_view contents) {
  AtomicFileWriter out(path);
  out.write(contents);
  out.commit();
}

void sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "cannot open directory ", dir.string(), " to fsync it: ", errno_text());
  const int rc = ::fsync(fd);
  const std::string err = rc == 0 ? "" : errno_text();
  ::close(fd);
  KILN_CHECK(rc == 0, "cannot fsync directory ", dir.string(), ": ", err);
}

}  // namespace kiln::io
