// Token shards: llm.c's file format for a tokenized corpus, so kiln reads the shards llm.c's
// scripts write (dev/data/*.py) and llm.c reads kiln's.
//
//   header  256 x int32, little-endian
//             [0] = 20240520        magic
//             [1] = 1 or 2          version: 1 = uint16 tokens (llm.c), 2 = uint32 tokens (kiln,
//                                   for vocabularies larger than 65536; llm.c does not read these)
//             [2] = token count     n, 0 <= n < 2^31
//             [3..255] = 0
//   tokens  n x uint16 (version 1) or n x uint32 (version 2), little-endian
//
// The file size must be exactly 1024 + n * (2 or 4) bytes; anything else is a bad shard.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kiln {

inline constexpr int32_t kTokenShardMagic = 20240520;
inline constexpr int64_t kTokenShardHeaderInts = 256;
inline constexpr int64_t kTokenShardHeaderBytes = kTokenShardHeaderInts * 4;

// Writes `tokens` to `path`. version 0 picks 1 (uint16) when every token is < 65536, else 2.
// Throws kiln::Error on a negative token, a token that does not fit the asked version, or an
// I/O failure (naming the file).
void write_token_shard(const std::string& path, std::span<const int32_t> tokens, int version = 0);

// A read-only, memory-mapped shard: random windows cost no copy and no read of the rest.
class TokenShard {
 public:
  // Checks the header against the file size; a bad shard is one kiln::Error naming the file
  // and what is wrong (magic, version, count, truncation).
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int version() const { return version_; }
  int64_t size() const { return count_; }  // number of tokens

  int64_t operator[](int64_t i) const {
    return version_ == 1 ? static_cast<int64_t>(tokens16()[i]) : static_cast<int64_t>(tokens32()[i]);
  }
  // Tokens [start, start + count) into `out` (bounds-checked).
  void read(int64_t start, int64_t count, int64_t* out) const;
  std::vector<int32_t> to_vector() const;

 private:
  const uint16_t* tokens16() const { return reinterpret_cast<const uint16_t*>(data_ + kTokenShardHeaderBytes); }
  const uint32_t* tokens32() const { return reinterpret_cast<const uint32_t*>(data_ + kTokenShardHeaderBytes); }
  void release();

  std::string path_;
  const unsigned char* data_ = nullptr;  // the whole file, mapped
  std::size_t mapped_bytes_ = 0;
  int version_ = 1;
  int64_t count_ = 0;
};

}  // namespace kiln
