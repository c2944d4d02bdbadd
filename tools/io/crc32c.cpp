// Slicing-by-8: eight 256-entry tables let the loop fold eight bytes per step instead of one,
// about 5x faster than the byte-wise loop, which matters when a checkpoint holds gigabytes.
// Table 0 is the classic byte-wise table for the reflected polynomial 0x82F63B78; table k
// advances a byte's contribution by k more zero bytes.
#include "tools/io/crc32c.h"

#include <array>
#include <bit>
#include <cstring>

namespace kiln::io {
namespace {

static_assert(std::endian::native == std::endian::little, "the 8-byte step assumes little-endian");

constexpr uint32_t kPolynomial = 0x82F63B78u;  // Castagnoli 0x1EDC6F41, bit-reversed

using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? (c >> 1) ^ kPolynomial : c >> 1;
    t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
  return t;
}

constexpr Tables kTables = make_tables();

}  // namespace

uint32_t crc32c(const void* data, std::size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= c;
    c = kTables[7][word & 0xff] ^ kTables[6][(word >> 8) & 0xff] ^
        kTables[5][(word >> 16) & 0xff] ^ kTables[4][(word >> 24) & 0xff] ^
        kTables[3][(word >> 32) & 0xff] ^ kTables[2][(word >> 40) & 0xff] ^
        kTables[1][(word >> 48) & 0xff] ^ kTables[0][word >> 56];
  }
  for (; n > 0; --n, ++p) c = kTables[0][(c ^ *p) & 0xffu] ^ (c >> 8);
  return ~c;
}

}  // namespace kiln::io
