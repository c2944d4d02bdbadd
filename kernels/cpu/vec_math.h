// exp and tanh for the CPU kernels' f32 hot loops, in plain arithmetic that GCC vectorises.
// The build targets baseline x86-64 without -ffast-math, so std::exp / std::tanh on floats
// stay one scalar glibc call per element (expf, and tanhf through expm1f): in a GPT training
// step those calls cost more than the arithmetic around them (cross-entropy over the
// vocabulary, the GELU of every MLP). f64 keeps the libm functions (gradchecks run in f64).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace kiln::cpu {

// c ? a : b on the bits. GCC turns a float `c ? a : b` followed by arithmetic into a branch
// around that (possibly trapping) arithmetic, which it does not vectorise without
// -fno-trapping-math; the integer mask keeps the loop straight-line.
inline float select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & m) | (std::bit_cast<uint32_t>(b) & ~m));
}

// e^x for x <= 0 (what softmax, log-sum-exp and tanh need), within 2 ulp of expf: Cephes'
// expf (x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial) with 2^n built in the exponent
// bits. Below -87.3 (the smallest normal float) it returns 0, so -inf gives 0; NaN stays NaN.
inline float exp_nonpos(float x) {
  constexpr float kLo = -87.33654475f;
  const float xc = select(x < kLo, kLo, select(x > 0.0f, 0.0f, x));
  // n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer in the default rounding mode.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 in two parts: exact n*hi
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n, n in [-126, 0], from the exponent bits
  const float two_n = std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return select(x < kLo, 0.0f, p * two_n);
}
inline double exp_nonpos(double x) { return std::exp(x); }

// tanh through e = exp(-2|x|) in (0, 1]: sign(x) (1 - e) / (1 + e). Near 0 the absolute
// error stays ~1e-7 (the rounding of 1 - e), which is what GELU's 1 + tanh(u) can resolve.
inline float tanh_fast(float x) {
  const uint32_t sign = std::bit_cast<uint32_t>(x) & 0x80000000u;
  const float e = exp_nonpos(-2.0f * std::bit_cast<float>(std::bit_cast<uint32_t>(x) ^ sign));
  const float t = (1.0f - e) / (1.0f + e);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(t) | sign);
}
inline double tanh_fast(double x) { return std::tanh(x); }

}  // namespace kiln::cpu
