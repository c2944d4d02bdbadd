// CRC-32C (Castagnoli), the checksum TFRecord files (TensorBoard event files) frame every record
// with, and the one kiln's checkpoints use to detect corrupted weights. Software, table-driven;
// no dependency on SSE4.2 so every build computes the same thing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln::io {

// CRC-32C of `n` bytes. To checksum data that arrives in pieces, pass the previous result as
// `crc`: crc32c(b, nb, crc32c(a, na)) == crc32c(a followed by b).
uint32_t crc32c(const void* data, std::size_t n, uint32_t crc = 0);
inline uint32_t crc32c(std::string_view s, uint32_t crc = 0) { return crc32c(s.data(), s.size(), crc); }

// TFRecord stores the CRC rotated right by 15 bits plus a constant, because a CRC of data that
// itself contains CRCs is weak; readers compare against this masked value.
inline uint32_t masked_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace kiln::io
