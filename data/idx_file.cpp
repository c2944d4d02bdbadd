#include "data/idx_file.h"

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

namespace kiln {

namespace {

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// The whole (decompressed) content of `path`. The files are small (47 MB at most for MNIST),
// and reading everything first lets the size checks compare the header with what is really
// there instead of trusting a header that may be garbage.
std::vector<uint8_t> read_all(const std::string& path) {
  std::error_code ec;
  KILN_CHECK(std::filesystem::exists(path, ec), path, ": no such file");
  KILN_CHECK(!std::filesystem::is_directory(path, ec), path, ": is a directory, expected an IDX file");
  // gzopen reads gzip files and, transparently, files that are not gzip-compressed.
  gzFile f = gzopen(path.c_str(), "rb");
  KILN_CHECK(f != nullptr, path, ": cannot open: ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  constexpr std::size_t kChunk = 1 << 20;
  for (;;) {
    const std::size_t have = bytes.size();
    bytes.resize(have + kChunk);
    const int got = gzread(f, bytes.data() + have, static_cast<unsigned>(kChunk));
    if (got < 0) {
      int code = 0;
      std::string why = gzerror(f, &code);
      gzclose(f);
      KILN_FAIL(path, ": cannot read (corrupt gzip data?): ", why);
    }
    bytes.resize(have + static_cast<std::size_t>(got));
    if (got == 0) break;
  }
  // A gzip stream cut short reads as a clean end with Z_BUF_ERROR set; the size check below
  // then reports it as truncated, with zlib's words added here.
  int code = Z_OK;
  const char* why = gzerror(f, &code);
  std::string zlib_error = code == Z_OK ? "" : why;
  if (zlib_error.rfind(path + ": ", 0) == 0) zlib_error.erase(0, path.size() + 2);  // zlib names the file too
  gzclose(f);
  if (code != Z_OK && code != Z_BUF_ERROR) KILN_FAIL(path, ": cannot read: ", zlib_error);
  if (code == Z_BUF_ERROR) {
    KILN_FAIL(path, ": truncated gzip stream (", zlib_error, "); got ", bytes.size(),
              " bytes before it ended");
  }
  return bytes;
}

// Parses the header of `bytes` (read from `path`), checks it against `magic`, and returns the
// elements as a u8 tensor of the header's shape.
Tensor parse_idx(const std::string& path, const std::vector<uint8_t>& bytes, uint32_t magic,
                 const char* what) {
  KILN_CHECK(bytes.size() >= 4, path, ": truncated: expected at least 4 bytes (the magic number), got ",
             bytes.size());
  const uint32_t got_magic = read_be32(bytes.data());
  KILN_CHECK(got_magic == magic, path, ": wrong magic number: expected ", hex32(magic), " (", what,
             "), got ", hex32(got_magic));
  const std::size_t ndim = magic & 0xFF;
  const std::size_t header = 4 + 4 * ndim;
  KILN_CHECK(bytes.size() >= header, path, ": truncated: expected a ", header, "-byte header, got ",
             bytes.size(), " bytes");

  Shape shape(ndim);
  unsigned __int128 elements = 1;  // three 32-bit sizes can overflow 64 bits
  for (std::size_t d = 0; d < ndim; ++d) {
    shape[d] = read_be32(bytes.data() + 4 + 4 * d);
    elements *= static_cast<uint64_t>(shape[d]);
  }
  const unsigned __int128 expected = header + elements;
  if (expected > bytes.size()) {
    // Print the promised size only when it is a sensible number; a garbage header is named as such.
    if (expected >> 62) {
      KILN_FAIL(path, ": truncated or corrupt: header promises shape ", shape_str(shape), ", got ",
                bytes.size(), " bytes");
    }
    KILN_FAIL(path, ": truncated: header promises shape ", shape_str(shape), ", so expected ",
              static_cast<uint64_t>(expected), " bytes, got ", bytes.size());
  }
  KILN_CHECK(expected == bytes.size(), path, ": ", bytes.size() - static_cast<uint64_t>(expected),
             " unexpected bytes after the data: header promises shape ", shape_str(shape), ", so expected ",
             static_cast<uint64_t>(expected), " bytes, got ", bytes.size());

  Tensor t = Tensor::empty(shape, {.dtype = DType::u8});
  if (t.numel() > 0) std::memcpy(t.data_ptr(), bytes.data() + header, static_cast<std::size_t>(t.numel()));
  return t;
}

}  // namespace

Tensor read_idx_images(const std::string& path) {
  return parse_idx(path, read_all(path), kIdxImagesMagic, "u8 images [N, rows, cols]");
}

Tensor read_idx_labels(const std::string& path) {
  return parse_idx(path, read_all(path), kIdxLabelsMagic, "u8 labels [N]");
}

}  // namespace kiln
