// 16-bit float storage types usable on host and device. Arithmetic goes through float
// ("opmath"), as in PyTorch: kernels load a Half/BFloat16, compute in f32, store back.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"

namespace kiln {

namespace detail {
KILN_HOST_DEVICE inline uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KILN_HOST_DEVICE inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
}  // namespace detail

// bfloat16: the top 16 bits of an f32, rounded to nearest even.
struct alignas(2) BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  KILN_HOST_DEVICE BFloat16(float f) {  // NOLINT(google-explicit-constructor)
    uint32_t u = detail::float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = 0x7fc0;  // quiet NaN
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  KILN_HOST_DEVICE operator float() const {  // NOLINT(google-explicit-constructor)
    return detail::bits_float(static_cast<uint32_t>(bits) << 16);
  }
};

// IEEE binary16, converted in software so host and device agree bit for bit.
struct alignas(2) Half {
  uint16_t bits = 0;
  Half() = default;
  KILN_HOST_DEVICE Half(float f) {  // NOLINT(google-explicit-constructor)
    uint32_t x = detail::float_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) { bits = static_cast<uint16_t>(sign | 0x7e00u); return; }  // NaN
    if (mag >= 0x477ff000u) { bits = static_cast<uint16_t>(sign | 0x7c00u); return; } // inf/overflow
    if (mag < 0x38800000u) {  // subnormal half (or zero): round at the 2^-24 quantum
      float a = detail::bits_float(mag) + 0.5f;  // 0.5 = 2^-1: shifts the value into mantissa
      bits = static_cast<uint16_t>(sign | (detail::float_bits(a) - detail::float_bits(0.5f)));
      return;
    }
    uint32_t m = mag + ((15u - 127u) << 23) + 0xfffu + ((mag >> 13) & 1u);  // round to nearest even
    bits = static_cast<uint16_t>(sign | (m >> 13));
  }
  KILN_HOST_DEVICE operator float() const {  // NOLINT(google-explicit-constructor)
    uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t man = bits & 0x3ffu;
    if (exp == 0x1f) return detail::bits_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {  // zero or subnormal: man * 2^-24
      float v = static_cast<float>(man) * 5.9604644775390625e-8f;
      return sign ? -v : v;
    }
    return detail::bits_float(sign | ((exp + 127 - 15) << 23) | (man << 13));
  }
};

}  // namespace kiln
