// CPU against CUDA for copies and random draws: strided copies with dtype conversion must give
// the same bits on both devices, and one seed must give the same random stream on both.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/copy.cu,
// kernels/cuda/random.cu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using Values = std::vector<double>;

using testing::kCuda;
const DType kFloatTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};
const DType kAllTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                           DType::i32, DType::i64, DType::u8,   DType::b8};

std::string name(DType a, DType b) {
  return std::string(dtype_name(a)) + " -> " + std::string(dtype_name(b));
}

// Element-for-element equality of two tensors' values (compared in f64 on the host; NaN
// equals NaN). Names the first differing element.
::testing::AssertionResult same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << a.meta_str() << " vs " << b.meta_str();
  const Values va = a.to_vector<double>(), vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i) {
    if (va[i] == vb[i] || (std::isnan(va[i]) && std::isnan(vb[i]))) continue;
    return ::testing::AssertionFailure() << "element " << i << ": " << va[i] << " vs " << vb[i]
                                         << " (" << a.meta_str() << " vs " << b.meta_str() << ")";
  }
  return ::testing::AssertionSuccess();
}

// Values in [0, 100) with fractional parts, so every float -> int conversion truncates and
// every 16-bit conversion rounds; non-negative so u8 conversions are defined.
Tensor test_values(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return rand(shape, {.dtype = DType::f64}, &gen) * 100.0;
}

TEST(CopyCuda, PermutedCopiesWithConversionMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor base = test_values({4, 5, 6}, 1);
  for (DType from : kAllTypes) {
    const Tensor cpu_src = base.to(from);
    const Tensor cuda_src = cpu_src.to(kCuda);
    ASSERT_TRUE(cuda_src.is_cuda());
    ASSERT_TRUE(same_values(cuda_src, cpu_src)) << dtype_name(from);
    for (DType to : kAllTypes) {
      SCOPED_TRACE(name(from, to));
      const Tensor cpu_p = cpu_src.permute({2, 0, 1});
      const Tensor cuda_p = cuda_src.permute({2, 0, 1});
      // contiguous() of a permuted tensor, then convert; and convert the strided view directly.
      EXPECT_TRUE(same_values(cuda_p.contiguous().to(to), cpu_p.contiguous().to(to)));
      const Tensor converted = cuda_p.to(to);
      EXPECT_TRUE(converted.is_cuda());
      EXPECT_EQ(converted.dtype(), to);
      EXPECT_TRUE(same_values(converted, cpu_p.to(to)));
      // A strided slice with a step, through a transpose.
      EXPECT_TRUE(same_values(cuda_src.slice(2, 1, 6, 2).transpose(0, 2).to(to),
                              cpu_src.slice(2, 1, 6, 2).transpose(0, 2).to(to)));
    }
  }
}

TEST(CopyCuda, ConversionChainsMatchCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  Generator gen(7);
  // Normal values of mixed magnitudes: 16-bit rounding is exercised in every binade.
  const Tensor base = randn({33, 17}, {.dtype = DType::f32}, &gen) * 1000.0;
  const std::vector<std::vector<DType>> chains = {
      {DType::bf16, DType::f32},           {DType::f16, DType::f32},
      {DType::f64, DType::bf16, DType::f32}, {DType::bf16, DType::f16, DType::f64},
      {DType::f16, DType::bf16, DType::f32}, {DType::i32, DType::bf16, DType::f32},
      {DType::f64, DType::i64, DType::f16}};
  for (const auto& chain : chains) {
    Tensor c = base.t();
    Tensor g = base.to(kCuda).t();
    std::string trace = "f32";
    for (DType dt : chain) {
      c = c.to(dt);
      g = g.to(dt);
      trace += std::string(" -> ") + std::string(dtype_name(dt));
    }
    SCOPED_TRACE(trace);
    EXPECT_TRUE(g.is_cuda());
    EXPECT_TRUE(same_values(g, c));
  }
}

TEST(CopyCuda, CopyIntoStridedDestinationsMatchesCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor src64 = test_values({5, 6, 4}, 2).permute({1, 2, 0});  // [6, 4, 5]
  for (DType dst_type : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dst_type));
    // dst is a permuted view of fresh storage on each device.
    Tensor cpu_dst = zeros({5, 6, 4}, {.dtype = dst_type}).permute({1, 2, 0});
    Tensor cuda_dst = zeros({5, 6, 4}, {.dtype = dst_type, .device = kCuda}).permute({1, 2, 0});
    cpu_dst.copy_(src64);
    cuda_dst.copy_(src64.to(kCuda));  // same device
    EXPECT_TRUE(same_values(cuda_dst, cpu_dst));

    // Host source into a strided device destination (conversion and a device move at once).
    Tensor cuda_dst2 = zeros({5, 6, 4}, {.dtype = dst_type, .device = kCuda}).permute({1, 2, 0});
    cuda_dst2.copy_(src64);
    EXPECT_TRUE(same_values(cuda_dst2, cpu_dst));

    // Device source into a strided host destination.
    Tensor cpu_dst2 = zeros({5, 6, 4}, {.dtype = dst_type}).permute({1, 2, 0});
    cpu_dst2.copy_(src64.to(kCuda).to(DType::f32));
    EXPECT_TRUE(same_values(cpu_dst2, cpu_dst.to(DType::f32).to(dst_type)));
  }
  // Broadcasting copy_ into a slice of a device tensor.
  Tensor cpu_m = zeros({3, 8}, {.dtype = DType::bf16});
  Tensor cuda_m = zeros({3, 8}, {.dtype = DType::bf16, .device = kCuda});
  const Tensor row = from_vector(Values{1.5, -2.25, 3.0, 1e4}, {4}, {.dtype = DType::f64});
  cpu_m.slice(1, 0, 8, 2).copy_(row);
  cuda_m.slice(1, 0, 8, 2).copy_(row.to(kCuda));
  EXPECT_TRUE(same_values(cuda_m, cpu_m));
  EXPECT_EQ(cuda_m.to_vector<double>()[6], 9984.0);  // bf16(1e4): 8-bit significand
}

TEST(CopyCuda, RoundTripThroughTheDeviceIsExact) {
  KILN_SKIP_WITHOUT_CUDA();
  Generator gen(3);
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor host = randn({7, 9, 3}, {.dtype = dt}, &gen).transpose(0, 2);
    Tensor back = host.to(kCuda).cpu();
    EXPECT_TRUE(back.device().is_cpu());
    EXPECT_EQ(back.dtype(), dt);
    EXPECT_TRUE(same_values(back, host));
  }
}

// ---------------------------------------------------------------- random streams

TEST(RandomCuda, UniformIsIdenticalOnBothDevices) {
  KILN_SKIP_WITHOUT_CUDA();
  // Odd sizes: the tails of the 4-element Philox blocks.
  for (int64_t n : {1, 3, 4, 5, 1023, 4097, 1 << 20}) {
    for (DType dt : kFloatTypes) {
      SCOPED_TRACE(std::to_string(n) + " " + std::string(dtype_name(dt)));
      Generator gc(42), gg(42);
      Tensor c = rand({n}, {.dtype = dt}, &gc);
      Tensor g = rand({n}, {.dtype = dt, .device = kCuda}, &gg);
      EXPECT_TRUE(g.is_cuda());
      EXPECT_TRUE(same_values(g, c));
      EXPECT_EQ(gg.offset(), gc.offset());
      // The next draw continues the same stream on both.
      EXPECT_TRUE(same_values(rand({n}, {.dtype = dt, .device = kCuda}, &gg),
                              rand({n}, {.dtype = dt}, &gc)));
    }
  }
}

TEST(RandomCuda, RandintIsIdenticalOnBothDevices) {
  KILN_SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::i64, DType::i32, DType::f32}) {
    SCOPED_TRACE(dtype_name(dt));
    Generator gc(9), gg(9);
    Tensor c = randint(-5, 17, {257, 3}, {.dtype = dt}, &gc);
    Tensor g = randint(-5, 17, {257, 3}, {.dtype = dt, .device = kCuda}, &gg);
    EXPECT_EQ(g.dtype(), dt);
    EXPECT_TRUE(same_values(g, c));
    for (double v : c.to_vector<double>()) {
      EXPECT_GE(v, -5);
      EXPECT_LT(v, 17);
    }
  }
  // A range wider than 32 bits.
  Generator gc(10), gg(10);
  const int64_t wide = int64_t{1} << 40;
  EXPECT_TRUE(same_values(randint(-wide, wide, {1001}, {.dtype = DType::i64, .device = kCuda}, &gg),
                          randint(-wide, wide, {1001}, {.dtype = DType::i64}, &gc)));
}

TEST(RandomCuda, NormalAgreesToFloatPrecision) {
  KILN_SKIP_WITHOUT_CUDA();
  // Box-Muller's log, sqrt, sin and cos differ in the last bits between libm and CUDA.
  for (DType dt : {DType::f32, DType::f64}) {
    for (int64_t n : {1, 5, 4097, 1 << 20}) {
      SCOPED_TRACE(std::to_string(n) + " " + std::string(dtype_name(dt)));
      Generator gc(1234), gg(1234);
      const Values c = randn({n}, {.dtype = dt}, &gc).to_vector<double>();
      const Values g = randn({n}, {.dtype = dt, .device = kCuda}, &gg).to_vector<double>();
      ASSERT_EQ(c.size(), g.size());
      int bad = 0;
      for (size_t i = 0; i < c.size() && bad < 5; ++i) {
        if (std::abs(c[i] - g[i]) > 1e-6 * std::max(1.0, std::abs(c[i]))) {
          ADD_FAILURE() << "element " << i << ": cpu " << c[i] << ", cuda " << g[i];
          ++bad;
        }
      }
    }
  }
}

TEST(RandomCuda, InPlaceFillsOfStridedTensorsMatch) {
  KILN_SKIP_WITHOUT_CUDA();
  Generator gc(5), gg(5);
  Tensor c = zeros({6, 10}).t();  // non-contiguous: filled through a temporary
  Tensor g = zeros({6, 10}, {.device = kCuda}).t();
  uniform_(c, -2.0, 3.0, &gc);
  uniform_(g, -2.0, 3.0, &gg);
  // a + (b - a) * u may be contracted to one FMA on the GPU: allow an ulp at |x| <= 3.
  EXPECT_LE(max_abs_diff(g, c), 5e-7);
  for (double v : c.to_vector<double>()) {
    EXPECT_GE(v, -2.0);
    EXPECT_LT(v, 3.0);
  }
  normal_(c, 1.0, 0.5, &gc);
  normal_(g, 1.0, 0.5, &gg);
  EXPECT_LE(max_abs_diff(g, c), 1e-5);
}

TEST(RandomCuda, DefaultGeneratorIsSharedAcrossDevices) {
  KILN_SKIP_WITHOUT_CUDA();
  manual_seed(77);
  Tensor c = rand({100});
  manual_seed(77);
  Tensor g = rand({100}, {.device = kCuda});
  EXPECT_TRUE(same_values(g, c));
}

}  // namespace
}  // namespace kiln
