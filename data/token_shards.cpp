#include "data/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.h"

namespace kiln {

// The format is little-endian and the tokens are mapped in place.
static_assert(std::endian::native == std::endian::little, "token shards assume a little-endian host");

void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int version) {
  KILN_CHECK(version == 0 || version == 1 || version == 2, "write_token_shard(", path, "): version must be 0 (the narrowest that fits), ",
             "1 (uint16) or 2 (uint32), got ", version);
  KILN_CHECK(tokens.size() <= static_cast<std::size_t>(std::numeric_limits<int32_t>::max()), "write_token_shard(",
             path, "): ", tokens.size(), " tokens do not fit one shard (at most 2^31 - 1)");
  int32_t max_token = 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    KILN_CHECK(tokens[i] >= 0, "write_token_shard(", path, "): token ", i, " is negative (", tokens[i], ")");
    max_token = std::max(max_token, tokens[i]);
  }
  if (version == 0) version = max_token <= 0xFFFF ? 1 : 2;
  KILN_CHECK(version == 2 || max_token <= 0xFFFF, "write_token_shard(", path, "): token ", max_token,
             " does not fit version 1 (uint16); use version 2 (uint32)");

  int32_t header[kTokenShardHeaderInts] = {};
  header[0] = kTokenShardMagic;
  header[1] = version;
  header[2] = static_cast<int32_t>(tokens.size());

  FILE* f = std::fopen(path.c_str(), "wb");
  KILN_CHECK(f, "cannot write token shard ", path, ": ", std::strerror(errno));
  bool ok = std::fwrite(header, sizeof header, 1, f) == 1;
  if (version == 2) {
    ok = ok && (tokens.empty() || std::fwrite(tokens.data(), 4, tokens.size(), f) == tokens.size());
  } else {
    std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    ok = ok && (narrow.empty() || std::fwrite(narrow.data(), 2, narrow.size(), f) == narrow.size());
  }
  ok = (std::fclose(f) == 0) && ok;
  KILN_CHECK(ok, "writing token shard ", path, " failed (disk full?)");
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "cannot open token shard ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    KILN_FAIL("cannot stat token shard ", path, ": ", std::strerror(errno));
  }
  const auto file_bytes = static_cast<int64_t>(st.st_size);
  if (file_bytes < kTokenShardHeaderBytes) {
    ::close(fd);
    KILN_FAIL("token shard ", path, " is truncated: ", file_bytes, " bytes, shorter than the ",
              kTokenShardHeaderBytes, "-byte header");
  }
  void* map = ::mmap(nullptr, static_cast<std::size_t>(file_bytes), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file
  KILN_CHECK(map != MAP_FAILED, "cannot map token shard ", path, ": ", std::strerror(errno));
  data_ = static_cast<const unsigned char*>(map);
  mapped_bytes_ = static_cast<std::size_t>(file_bytes);

  int32_t header[3];
  std::memcpy(header, data_, sizeof header);
  try {
    KILN_CHECK(header[0] == kTokenShardMagic, "token shard ", path, ": bad magic number ", header[0], " (expected ",
               kTokenShardMagic, "); not a token shard");
    KILN_CHECK(header[1] == 1 || header[1] == 2, "token shard ", path, ": unsupported version ", header[1],
               " (1 = uint16 tokens, 2 = uint32 tokens)");
    KILN_CHECK(header[2] >= 0, "token shard ", path, ": negative token count ", header[2]);
    version_ = header[1];
    count_ = header[2];
    const int64_t width = version_ == 1 ? 2 : 4;
    const int64_t expected = kTokenShardHeaderBytes + count_ * width;
    KILN_CHECK(file_bytes >= expected, "token shard ", path, " is truncated: the header says ", count_,
               " tokens (", expected, " bytes), the file has ", file_bytes, " bytes");
    KILN_CHECK(file_bytes == expected, "token shard ", path, ": the header says ", count_, " tokens (", expected,
               " bytes), the file has ", file_bytes, " bytes (", file_bytes - expected, " extra)");
  } catch (...) {
    release();
    throw;
  }
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      mapped_bytes_(std::exchange(other.mapped_bytes_, 0)),
      version_(other.version_),
      count_(other.count_) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
    version_ = other.version_;
    count_ = other.count_;
  }
  return *this;
}

void TokenShard::release() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), mapped_bytes_);
  data_ = nullptr;
  mapped_bytes_ = 0;
}

void TokenShard::read(int64_t start, int64_t count, int64_t* out) const {
  KILN_CHECK(start >= 0 && count >= 0 && start + count <= count_, "token shard ", path_, ": tokens [", start, ", ",
             start + count, ") are outside its ", count_, " tokens");
  if (version_ == 1) {
    const uint16_t* t = tokens16() + start;
    for (int64_t i = 0; i < count; ++i) out[i] = t[i];
  } else {
    const uint32_t* t = tokens32() + start;
    for (int64_t i = 0; i < count; ++i) out[i] = t[i];
  }
}

std::vector<int32_t> TokenShard::to_vector() const {
  std::vector<int32_t> v(static_cast<std::size_t>(count_));
  for (int64_t i = 0; i < count_; ++i) v[static_cast<std::size_t>(i)] = static_cast<int32_t>((*this)[i]);
  return v;
}

}  // namespace kiln
