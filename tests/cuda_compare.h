// What the *_cuda tests share: inputs drawn on the CPU (so both devices read the same
// values), NaN-filled outputs and device memory (so an element a kernel leaves unwritten
// fails), and the comparison of a CUDA result with the CPU reference. Each test file states
// its tolerances and why in its header comment.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace kiln::testing {

inline constexpr Device kCuda{DeviceType::CUDA, 0};

// Uniform values in [lo, hi), drawn in `draw` on the CPU and rounded to `dtype`; the CUDA copy
// of the result is bit-identical.
inline Tensor random_cpu(const Shape& shape, double lo, double hi, DType dtype, uint64_t seed,
                         DType draw = DType::f32) {
  NoGradGuard no_grad;
  Generator gen(seed);
  return add(mul(rand(shape, {.dtype = draw}, &gen), hi - lo), lo).to(dtype);
}

// Standard normal values, drawn in f32 on the CPU and rounded to `dtype`.
inline Tensor randn_cpu(const Shape& shape, uint64_t seed, DType dtype) {
  Generator gen(seed);
  return randn(shape, {.dtype = DType::f32}, &gen).to(dtype);
}

// A tensor like `t` (shape, dtype, device) full of NaN: an output buffer whose every element
// the op must write.
inline Tensor nan_like(const Tensor& t) { return full(t.shape(), std::nan(""), t.options()); }

// `copies` device blocks of each byte size in `bytes`.
struct DeviceBlocks {
  std::vector<int64_t> bytes;
  int copies = 1;
};

// The caching allocator's small sizes, eight of each.
inline const DeviceBlocks kSmallDeviceBlocks{{int64_t{4} << 10, int64_t{64} << 10, int64_t{512} << 10, int64_t{1} << 20}, 8};

// Holds all of `groups` at once, filled with 0xFF bytes (NaN as f32, bf16 and f16), then frees
// them: the caching allocator hands the next tensors of those sizes (the outputs of the op
// under test) out full of NaN rather than zeros.
inline void poison_device_blocks(const std::vector<DeviceBlocks>& groups) {
  std::vector<Tensor> blocks;
  for (const DeviceBlocks& g : groups)
    for (int64_t bytes : g.bytes)
      for (int i = 0; i < g.copies; ++i) blocks.push_back(full({bytes}, 255, {.dtype = DType::u8, .device = kCuda}));
}

// Element by element: |cuda - cpu| <= rtol * |cpu| + atol_scale * max|cpu| + atol, where
// max|cpu| is over the finite reference values.
struct Tolerance {
  double rtol = 0;
  double atol = 0;
  double atol_scale = 0;  // absolute slack as a fraction of the largest |reference| value
  // true: equal values pass whatever the tolerance, NaN against NaN and equal infinities
  // included (the tests of NaN propagation need this). false: every element must be within
  // the tolerance, which a NaN never is.
  bool equal_values_pass = true;
};

// Compares a CUDA result with the CPU reference; reports how many elements differ and the
// first of them.
inline void expect_matches(const Tensor& cuda_result, const Tensor& cpu_result, Tolerance tol,
                           const std::string& what) {
  ASSERT_TRUE(cuda_result.defined() && cpu_result.defined()) << what;
  ASSERT_TRUE(cuda_result.is_cuda()) << what;
  ASSERT_EQ(cuda_result.dtype(), cpu_result.dtype()) << what;
  ASSERT_EQ(cuda_result.shape(), cpu_result.shape()) << what;
  const std::vector<double> got = cuda_result.cpu().to_vector<double>();
  const std::vector<double> want = cpu_result.to_vector<double>();
  double scale = 0;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::abs(w));
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool equal = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    const bool within =
        std::abs(got[i] - want[i]) <= tol.rtol * std::abs(want[i]) + tol.atol_scale * scale + tol.atol;
    const bool ok = (tol.equal_values_pass && equal) || within;
    if (!ok && bad++ == 0) first = static_cast<int64_t>(i);
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements differ; first at "
                    << first << ": cuda " << (first >= 0 ? got[first] : 0.0) << ", cpu "
                    << (first >= 0 ? want[first] : 0.0) << " (max |cpu| " << scale << ")";
}

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

// Over the whole tensor: max|cpu - gpu| <= rtol * max|cpu|. Note the order: CPU first.
inline void expect_close(const Tensor& cpu, const Tensor& gpu, double rtol, const std::string& what) {
  ASSERT_TRUE(cpu.defined() && gpu.defined()) << what;
  ASSERT_TRUE(gpu.is_cuda()) << what;
  ASSERT_EQ(cpu.shape(), gpu.shape()) << what;
  ASSERT_EQ(cpu.dtype(), gpu.dtype()) << what;
  EXPECT_LE(max_abs_diff(cpu, gpu.cpu()), rtol * max_abs(cpu)) << what;
}

}  // namespace kiln::testing
