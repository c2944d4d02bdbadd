// Philox4x32-10 and the element mapping in core/philox.h, and Generator's offset bookkeeping.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <thread>
#include <vector>

#include "core/generator.h"
#include "core/philox.h"

namespace kiln {
namespace {

constexpr int kDraws = 1'000'000;

// Known-answer vectors from Random123's kat_vectors (philox4x32, 10 rounds).
struct Kat {
  PhiloxWords counter;
  uint32_t key[2];
  PhiloxWords expected;
};

TEST(Philox, KnownAnswerVectors) {
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, {0, 0}, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, {0xffffffff, 0xffffffff},
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, {0xa4093822, 0x299f31d0},
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& kat : kats) {
    uint64_t seed = (uint64_t{kat.key[1]} << 32) | kat.key[0];
    PhiloxWords out = Philox4x32(seed)(kat.counter);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(out.w[w], kat.expected.w[w]) << "word " << w;
  }
}

TEST(Philox, ElementMappingUsesBlockIndexAndOffset) {
  // Counter 0, key 0 is seed 0, offset 0, elements 0..3.
  const uint32_t kat[4] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(philox_u32(0, 0, i), kat[i]);
  // Element i is word i % 4 of the block with counter (i / 4 | lane << 62, offset).
  const uint64_t seed = 0x299f31d0a4093822ull, offset = 0x0370734413198a2eull;
  const Philox4x32 philox(seed);
  for (uint64_t i : {uint64_t{0}, uint64_t{7}, uint64_t{0x123456789abcdefull}})
    for (uint32_t lane : {0u, 1u}) {
      uint64_t block = i / 4;
      PhiloxWords counter{{uint32_t(block), uint32_t(block >> 32) | (lane << 30), uint32_t(offset),
                           uint32_t(offset >> 32)}};
      EXPECT_EQ(philox_u32(seed, offset, i, lane), philox(counter).w[i % 4]) << i << " " << lane;
    }
  EXPECT_NE(philox_u32(seed, offset, 5, 1), philox_u32(seed, offset, 5, 0));
}

TEST(Philox, UniformFloatMomentsAndRange) {
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < kDraws; ++i) {
    float u = uniform_float(42, 7, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += double(u) * u;
  }
  double mean = sum / kDraws, var = sum_sq / kDraws - mean * mean;
  // Standard errors: mean sqrt(1/12/n) ~ 2.9e-4, variance ~ 7.5e-5; bounds are ~5 sigma.
  EXPECT_NEAR(mean, 0.5, 1.5e-3);
  EXPECT_NEAR(var, 1.0 / 12, 4e-4);
  EXPECT_EQ(u32_to_unit_float(0), 0.0f);
  EXPECT_LT(u32_to_unit_float(0xffffffffu), 1.0f);
}

TEST(Philox, UniformDoubleMomentsAndRange) {
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < kDraws; ++i) {
    double u = uniform_double(42, 7, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    sum_sq += u * u;
  }
  double mean = sum / kDraws, var = sum_sq / kDraws - mean * mean;
  EXPECT_NEAR(mean, 0.5, 1.5e-3);
  EXPECT_NEAR(var, 1.0 / 12, 4e-4);
  EXPECT_LT(u32x2_to_unit_double(0xffffffffu, 0xffffffffu), 1.0);
  // The high word matches uniform_float's 24 bits: the double refines the float.
  for (int i = 0; i < 100; ++i) {
    double d = uniform_double(3, 5, i), f = uniform_float(3, 5, i);
    EXPECT_GE(d, f);
    EXPECT_LT(d, f + 0x1p-24);
  }
}

TEST(Philox, NormalMomentsAndFinite) {
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < kDraws; ++i) {
    float z = normal_float(42, 7, i);
    ASSERT_TRUE(std::isfinite(z)) << "element " << i;
    sum += z;
    sum_sq += double(z) * z;
  }
  double mean = sum / kDraws, var = sum_sq / kDraws - mean * mean;
  // Standard errors: mean 1e-3, variance sqrt(2/n) ~ 1.4e-3.
  EXPECT_NEAR(mean, 0.0, 5e-3);
  EXPECT_NEAR(var, 1.0, 7e-3);
}

TEST(Philox, NormalAtExtremeUniforms) {
  const float largest_u = u32_to_unit_float(0xffffffffu);  // 1 - 2^-24
  const float us[] = {0.0f, 0x1p-24f, 0.25f, 0.5f, largest_u};
  for (float u1 : us)
    for (float u2 : us)
      for (bool take_sin : {false, true}) {
        float z = box_muller(u1, u2, take_sin);
        EXPECT_TRUE(std::isfinite(z)) << u1 << " " << u2;
        EXPECT_LE(std::fabs(z), 5.78f);  // sqrt(-2 log 2^-24) ~ 5.7683
      }
  EXPECT_EQ(box_muller(0.0f, 0.3f, false), 0.0f);  // log(1) = 0
  EXPECT_NEAR(box_muller(largest_u, 0.0f, false), 5.7683f, 1e-3f);
}

TEST(Philox, UniformIntSmallRangeHitsBothEnds) {
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 100'000; ++i) {
    int64_t v = uniform_int(1, 0, i, -2, 3);
    ASSERT_GE(v, -2);
    ASSERT_LT(v, 3);
    ++counts[v + 2];
  }
  for (int c : counts) EXPECT_NEAR(c, 20'000, 1'000);  // sd ~ 126
  for (int i = 0; i < 100; ++i) EXPECT_EQ(uniform_int(1, 0, i, 9, 10), 9);
}

TEST(Philox, UniformIntWideRanges) {
  // Beyond 2^32: values must spread over the whole range, not just the low 32 bits.
  const int64_t low = -(int64_t{1} << 40), high = int64_t{1} << 40;
  int64_t min_v = high, max_v = low;
  for (int i = 0; i < 100'000; ++i) {
    int64_t v = uniform_int(5, 3, i, low, high);
    ASSERT_GE(v, low);
    ASSERT_LT(v, high);
    min_v = std::min(min_v, v);
    max_v = std::max(max_v, v);
  }
  EXPECT_LT(min_v, low / 2 - (int64_t{1} << 38));
  EXPECT_GT(max_v, high / 2 + (int64_t{1} << 38));

  // The full int64 range: both signs appear and nothing overflows.
  const int64_t lo64 = std::numeric_limits<int64_t>::min();
  const int64_t hi64 = std::numeric_limits<int64_t>::max();
  int negatives = 0;
  for (int i = 0; i < 10'000; ++i) negatives += uniform_int(5, 3, i, lo64, hi64) < 0;
  EXPECT_NEAR(negatives, 5'000, 300);

  // A range just under 2^32 (two words): mean near the middle, all values inside.
  const int64_t r = 3 * (int64_t{1} << 30);
  double sum = 0;
  for (int i = 0; i < 100'000; ++i) {
    int64_t v = uniform_int(8, 0, i, 0, r);
    ASSERT_LT(v, r);
    sum += double(v);
  }
  EXPECT_NEAR(sum / 100'000 / r, 0.5, 5e-3);
}

TEST(Philox, Determinism) {
  for (uint64_t i = 0; i < 1000; ++i) {
    ASSERT_EQ(philox_u32(123, 456, i), philox_u32(123, 456, i));
    ASSERT_EQ(normal_float(123, 456, i), normal_float(123, 456, i));
  }
  int same_seed_diff = 0, same_offset_diff = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_seed_diff += philox_u32(123, 456, i) != philox_u32(124, 456, i);
    same_offset_diff += philox_u32(123, 456, i) != philox_u32(123, 457, i);
  }
  EXPECT_GE(same_seed_diff, 999);
  EXPECT_GE(same_offset_diff, 999);
}

TEST(Generator, AdvanceArithmetic) {
  Generator g(77);
  EXPECT_EQ(g.seed(), 77u);
  EXPECT_EQ(g.offset(), 0u);
  EXPECT_EQ(g.advance(10), 0u);  // 10 elements = 3 blocks
  EXPECT_EQ(g.advance(4), 3u);   // exactly 1 block
  EXPECT_EQ(g.advance(1), 4u);
  EXPECT_EQ(g.advance(0), 5u);   // still a fresh offset
  EXPECT_EQ(g.offset(), 6u);
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  g.set_state(1, 0);
  EXPECT_EQ(g.advance(max), 0u);  // no overflow in the rounding
  EXPECT_EQ(g.offset(), max / 4 + 1);
  g.manual_seed(9);
  EXPECT_EQ(g.seed(), 9u);
  EXPECT_EQ(g.offset(), 0u);
}

TEST(Generator, ConsecutiveDrawsUseDistinctBlocks) {
  Generator g(2024);
  const uint64_t n = 1000;
  uint64_t first = g.advance(n), second = g.advance(n);
  std::set<uint32_t> seen;
  for (uint64_t i = 0; i < n; ++i) seen.insert(philox_u32(g.seed(), first, i));
  int repeats = 0;
  for (uint64_t i = 0; i < n; ++i) repeats += seen.count(philox_u32(g.seed(), second, i));
  EXPECT_LE(repeats, 1);  // chance collisions among 2000 32-bit words are ~5e-4 likely
}

TEST(Generator, SaveRestoreReplaysTheStream) {
  Generator g(5);
  g.advance(17);
  uint64_t seed = g.seed(), offset = g.offset();
  uint64_t a = g.advance(8);
  g.set_state(seed, offset);
  EXPECT_EQ(g.advance(8), a);
}

TEST(Generator, AdvanceIsThreadSafe) {
  Generator g;
  constexpr int kThreads = 8, kCalls = 1000;
  std::vector<std::vector<uint64_t>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int c = 0; c < kCalls; ++c) got[t].push_back(g.advance(8));  // 2 blocks each
    });
  for (auto& th : threads) th.join();
  std::set<uint64_t> offsets;
  for (auto& v : got) offsets.insert(v.begin(), v.end());
  EXPECT_EQ(offsets.size(), size_t{kThreads * kCalls});
  EXPECT_EQ(g.offset(), uint64_t{2 * kThreads * kCalls});
}

TEST(Generator, DefaultGeneratorManualSeed) {
  manual_seed(31);
  EXPECT_EQ(default_generator().seed(), 31u);
  EXPECT_EQ(default_generator().offset(), 0u);
  manual_seed(0);
}

}  // namespace
}  // namespace kiln
