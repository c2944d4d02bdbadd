// All-or-nothing file writes: the data goes to `<path>.tmp.<pid>`, is fsync'ed, then renamed
// over `path` and the directory fsync'ed. A crash or an error at any point leaves either the old
// file or the complete new one under `path`, never a half-written mix; that is what lets a
// training run trust the newest checkpoint it finds after a crash.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

namespace kiln::io {

class AtomicFileWriter {
 public:
  // Creates (or truncates a stale) `<target>.tmp.<pid>`; the target is untouched until commit().
  explicit AtomicFileWriter(std::filesystem::path target);
  // Without commit() (an error, an exception): closes and deletes the temporary file.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t n);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync the data, rename over the target, fsync the directory. Once this returns the new
  // file survives a power loss.
  void commit();

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// One-shot form: `contents` becomes the file at `path`, atomically and durably.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// fsync on a directory, which makes renames and deletions in it durable.
void sync_directory(const std::filesystem::path& dir);

}  // namespace kiln::io
