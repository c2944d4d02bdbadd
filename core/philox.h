// Philox4x32-10, a counter-based random number generator (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC'11), and the mapping from (seed, offset, element index)
// to uniform, normal and integer draws that kiln uses on every device.
//
// Counter-based means there is no state to carry: element i of a draw is a pure function of
// (seed, offset, i). So a CUDA thread computes exactly the number the CPU loop computes for
// the same element, and the CPU and GPU streams are the same stream.
//
// Layout of the 128-bit Philox counter (words c0..c3) for element i:
//   c0, c1 = i / 4 (the block index; 62 bits suffice, the top 2 bits of c1 hold the lane)
//   c2, c3 = offset (from Generator::advance, one per draw)
// and element i takes word i % 4 of the block. Lane 0 is the main stream; it is the same
// layout as cuRAND's Philox4_32_10, so philox_u32(seed, offset, i) equals curand() after
// curand_init(seed, /*subsequence=*/offset, /*offset=*/i, &state). Lane 1 gives a second,
// independent word for element i where one word is not enough (doubles, wide integers);
// it lives in the block-index bits so it can never collide with another draw's offset.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace kiln {

// Four 32-bit words: a Philox counter or its output block.
struct PhiloxWords {
  uint32_t w[4];
};

struct Philox4x32 {
  static constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  static constexpr uint32_t kBump0 = 0x9E3779B9u, kBump1 = 0xBB67AE85u;  // golden ratio, sqrt(3)-1
  static constexpr int kRounds = 10;

  uint32_t key[2];

  // The key is the seed, low word first (as cuRAND does).
  KILN_HOST_DEVICE explicit Philox4x32(uint64_t seed)
      : key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)} {}

  // The raw bijection: 10 rounds over a full 128-bit counter. Known-answer tests use this.
  KILN_HOST_DEVICE PhiloxWords operator()(PhiloxWords c) const {
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < kRounds; ++r) {
      if (r > 0) { k0 += kBump0; k1 += kBump1; }
      // A 64-bit product is exact on both devices and compiles to one wide multiply.
      uint64_t p0 = static_cast<uint64_t>(kMul0) * c.w[0];
      uint64_t p1 = static_cast<uint64_t>(kMul1) * c.w[2];
      c = PhiloxWords{{static_cast<uint32_t>(p1 >> 32) ^ c.w[1] ^ k0, static_cast<uint32_t>(p1),
                       static_cast<uint32_t>(p0 >> 32) ^ c.w[3] ^ k1, static_cast<uint32_t>(p0)}};
    }
    return c;
  }

  // The block for block index `block` (= element / 4) of the draw at `offset`, in `lane`.
  KILN_HOST_DEVICE PhiloxWords block(uint64_t block, uint64_t offset, uint32_t lane = 0) const {
    return (*this)(PhiloxWords{{static_cast<uint32_t>(block),
                                static_cast<uint32_t>(block >> 32) | (lane << 30),
                                static_cast<uint32_t>(offset),
                                static_cast<uint32_t>(offset >> 32)}});
  }
};

// ---- The element mapping: element i of a draw at (seed, offset). ----

KILN_HOST_DEVICE inline uint32_t philox_u32(uint64_t seed, uint64_t offset, uint64_t i,
                                            uint32_t lane = 0) {
  return Philox4x32(seed).block(i / 4, offset, lane).w[i % 4];
}

// Top 24 bits → [0, 1) on the float grid k * 2^-24: exact, so both devices agree bit for bit,
// and never 1.0f (which rounding a 32-bit value to float could produce).
KILN_HOST_DEVICE inline float u32_to_unit_float(uint32_t x) {
  return static_cast<float>(x >> 8) * 0x1p-24f;
}

// 27 bits of `hi` and 26 of `lo` → [0, 1) on the double grid k * 2^-53 (as genrand_res53).
KILN_HOST_DEVICE inline double u32x2_to_unit_double(uint32_t hi, uint32_t lo) {
  uint64_t bits = (static_cast<uint64_t>(hi >> 5) << 26) | (lo >> 6);
  return static_cast<double>(bits) * 0x1p-53;
}

KILN_HOST_DEVICE inline float uniform_float(uint64_t seed, uint64_t offset, uint64_t i) {
  return u32_to_unit_float(philox_u32(seed, offset, i));
}

// 53 bits need two words: the high bits from lane 0 (the same word uniform_float uses), the low
// bits from lane 1 at the same element.
KILN_HOST_DEVICE inline double uniform_double(uint64_t seed, uint64_t offset, uint64_t i) {
  return u32x2_to_unit_double(philox_u32(seed, offset, i, 0), philox_u32(seed, offset, i, 1));
}

// Box–Muller: r = sqrt(-2 log(1 - u1)), theta = 2*pi*u2; the pair gives r*cos and r*sin.
// u1 is in [0, 1), so 1 - u1 is in [2^-24, 1] (exact in float) and the log is finite:
// |result| <= sqrt(-2 log 2^-24) ~ 5.77. Each step is one correctly rounded op or one libm call
// (no a*b+c, so FMA contraction cannot change it). logf/cosf/sinf differ by a few ulp between
// host libm and CUDA, so CPU and GPU normals agree to ~1e-6 relative, not bit for bit.
// Do not build with --use_fast_math, which swaps in far less accurate intrinsics.
KILN_HOST_DEVICE inline float box_muller(float u1, float u2, bool take_sin) {
  constexpr float kTwoPi = 6.28318530717958647692f;
  float r = sqrtf(-2.0f * logf(1.0f - u1));
  float theta = kTwoPi * u2;
  return take_sin ? r * sinf(theta) : r * cosf(theta);
}

// Elements 2k and 2k+1 share the uniform pair at elements (2k, 2k+1): both sit in one Philox
// block, and the pair's cos and sin halves are independent standard normals.
KILN_HOST_DEVICE inline float normal_float(uint64_t seed, uint64_t offset, uint64_t i) {
  uint64_t first = i & ~uint64_t{1};
  return box_muller(uniform_float(seed, offset, first), uniform_float(seed, offset, first + 1),
                    (i & 1) != 0);
}

// High 64 bits of a 64x64-bit product, exact on both devices.
KILN_HOST_DEVICE inline uint64_t mulhi_u64(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Integer in [low, high); the caller checks low < high (a device function cannot throw).
// Range reduction by multiply-shift, floor(x * range / 2^bits), exact in integer arithmetic.
// Its bias is at most range / 2^bits relative per value, so one 32-bit word serves ranges up
// to 2^16 (bias <= 2^-16) and wider ranges take 64 bits (lane 0 high, lane 1 low): a single
// word would give some values of a range near 2^32 twice the probability of others.
KILN_HOST_DEVICE inline int64_t uniform_int(uint64_t seed, uint64_t offset, uint64_t i,
                                            int64_t low, int64_t high) {
  uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);  // wraps correctly
  uint64_t hi = philox_u32(seed, offset, i, 0);
  uint64_t pick;
  if (range <= (uint64_t{1} << 16)) {
    pick = (hi * range) >> 32;
  } else {
    pick = mulhi_u64((hi << 32) | philox_u32(seed, offset, i, 1), range);
  }
  return static_cast<int64_t>(static_cast<uint64_t>(low) + pick);  // two's-complement add
}

}  // namespace kiln
