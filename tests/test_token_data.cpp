// Token shards (llm.c format) and the TokenLoader: write/read round trips for uint16 and uint32
// shards, every bad-header case, glob patterns, and the loader's windows: targets are the inputs
// shifted by one and both are real windows of the data, seeded determinism, prefetch ==
// synchronous, different ranks get different windows, resume from state(), a sequential pass
// covers every window once, and (with a GPU) CUDA batches equal the CPU ones.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/device.h"
#include "data/token_loader.h"
#include "data/token_shards.h"
#include "tests/expect_error.h"
#include "tests/temp_files.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::TempDir;
namespace fs = std::filesystem;

// 0, 1, 2, ... so a token's value is its global position plus `base`.
std::vector<int32_t> iota_tokens(int64_t n, int32_t base = 0) {
  std::vector<int32_t> t(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = base + static_cast<int32_t>(i);
  return t;
}

// A raw file: a header of three ints (the rest zero) and `payload` bytes.
void write_raw(const std::string& path, int32_t magic, int32_t version, int32_t count, std::size_t payload) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), 1024);
  std::vector<char> bytes(payload, 7);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(TokenShard, RoundTripUint16) {
  TempDir dir;
  const std::vector<int32_t> tokens = {0, 1, 65535, 42, 50256, 7};
  write_token_shard(dir.file("a.bin"), tokens);
  EXPECT_EQ(fs::file_size(dir.file("a.bin")), 1024u + 2 * tokens.size());
  TokenShard s(dir.file("a.bin"));
  EXPECT_EQ(s.version(), 1);
  EXPECT_EQ(s.size(), 6);
  EXPECT_EQ(s.to_vector(), tokens);

  // The header is llm.c's: magic, version, count as little-endian int32.
  std::ifstream f(dir.file("a.bin"), std::ios::binary);
  int32_t h[3];
  f.read(reinterpret_cast<char*>(h), sizeof h);
  EXPECT_EQ(h[0], 20240520);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[2], 6);
}

TEST(TokenShard, Uint32ForLargeVocabularies) {
  TempDir dir;
  const std::vector<int32_t> tokens = {70000, 3, 1 << 30};
  write_token_shard(dir.file("b.bin"), tokens);  // version chosen from the largest token
  EXPECT_EQ(fs::file_size(dir.file("b.bin")), 1024u + 4 * tokens.size());
  TokenShard s(dir.file("b.bin"));
  EXPECT_EQ(s.version(), 2);
  EXPECT_EQ(s.to_vector(), tokens);

  write_token_shard(dir.file("c.bin"), std::vector<int32_t>{1, 2}, 2);  // asked for, though small
  EXPECT_EQ(TokenShard(dir.file("c.bin")).version(), 2);
  expect_error([&] { write_token_shard(dir.file("d.bin"), tokens, 1); }, {"d.bin", "1073741824", "version 2"});
  expect_error([&] { write_token_shard(dir.file("e.bin"), std::vector<int32_t>{1, -3}); }, {"e.bin", "negative"});
}

TEST(TokenShard, EmptyShardIsValid) {
  TempDir dir;
  write_token_shard(dir.file("empty.bin"), std::vector<int32_t>{});
  EXPECT_EQ(TokenShard(dir.file("empty.bin")).size(), 0);
}

TEST(TokenShard, BadHeadersNameTheFileAndTheProblem) {
  TempDir dir;
  expect_error([&] { TokenShard s(dir.file("missing.bin")); }, {"missing.bin", "cannot open"});

  std::ofstream(dir.file("short.bin")) << "tiny";
  expect_error([&] { TokenShard s(dir.file("short.bin")); }, {"short.bin", "truncated", "4 bytes"});

  write_raw(dir.file("magic.bin"), 12345, 1, 2, 4);
  expect_error([&] { TokenShard s(dir.file("magic.bin")); }, {"magic.bin", "bad magic", "12345"});

  write_raw(dir.file("version.bin"), kTokenShardMagic, 3, 2, 4);
  expect_error([&] { TokenShard s(dir.file("version.bin")); }, {"version.bin", "unsupported version 3"});

  write_raw(dir.file("negative.bin"), kTokenShardMagic, 1, -5, 0);
  expect_error([&] { TokenShard s(dir.file("negative.bin")); }, {"negative.bin", "negative token count"});

  write_raw(dir.file("truncated.bin"), kTokenShardMagic, 1, 10, 19);  // 10 uint16 need 20 bytes
  expect_error([&] { TokenShard s(dir.file("truncated.bin")); }, {"truncated.bin", "truncated", "10 tokens"});

  write_raw(dir.file("truncated32.bin"), kTokenShardMagic, 2, 10, 20);  // 10 uint32 need 40 bytes
  expect_error([&] { TokenShard s(dir.file("truncated32.bin")); }, {"truncated32.bin", "truncated", "1064 bytes"});

  write_raw(dir.file("extra.bin"), kTokenShardMagic, 1, 10, 22);
  expect_error([&] { TokenShard s(dir.file("extra.bin")); }, {"extra.bin", "10 tokens", "2 extra"});

  TokenShard ok = [&] {
    write_token_shard(dir.file("ok.bin"), iota_tokens(5));
    return TokenShard(dir.file("ok.bin"));
  }();
  int64_t out[8];
  expect_error([&] { ok.read(3, 3, out); }, {"ok.bin", "[3, 6)", "5 tokens"});
}

TEST(TokenShard, GlobPatternsExpandSorted) {
  TempDir dir;
  for (const char* name : {"train_000002.bin", "train_000000.bin", "train_000001.bin", "val_000000.bin"})
    write_token_shard(dir.file(name), iota_tokens(3));
  const auto files = expand_shard_patterns({dir.file("train_*.bin")});
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], dir.file("train_000000.bin"));
  EXPECT_EQ(files[2], dir.file("train_000002.bin"));
  expect_error([&] { expand_shard_patterns({dir.file("test_*.bin")}); }, {"test_*.bin", "no file matches"});
  EXPECT_EQ(expand_shard_patterns({dir.file("plain.bin")}).size(), 1u);  // a plain path passes through
}

// Three shards whose token at global position p is p: a window's values say where it came from.
struct Corpus {
  TempDir dir;
  std::vector<int64_t> sizes = {100, 37, 64};
  Corpus() {
    int32_t base = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      write_token_shard(dir.file("train_00000" + std::to_string(i) + ".bin"), iota_tokens(sizes[i], base));
      base += static_cast<int32_t>(sizes[i]);
    }
  }
  std::string pattern() const { return dir.file("train_*.bin"); }
  // The shard holding global position p, and its first position.
  std::pair<int64_t, int64_t> shard_of(int64_t p) const {
    int64_t start = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      if (p < start + sizes[i]) return {static_cast<int64_t>(i), start};
      start += sizes[i];
    }
    return {-1, start};
  }
};

std::vector<int64_t> values(const Tensor& t) {
  const int64_t* p = t.data<int64_t>();
  return std::vector<int64_t>(p, p + t.numel());
}

// Every row is T + 1 consecutive tokens of one shard, starting at batch.indices[row].
void expect_real_windows(const Corpus& c, const Batch& b, int64_t T) {
  ASSERT_EQ(b.inputs.dtype(), DType::i64);
  ASSERT_EQ(b.targets.dtype(), DType::i64);
  ASSERT_EQ(b.inputs.shape(), b.targets.shape());
  const auto in = values(b.inputs), tg = values(b.targets);
  for (int64_t r = 0; r < b.inputs.shape()[0]; ++r) {
    const int64_t start = b.indices[static_cast<std::size_t>(r)];
    const auto [shard, shard_start] = c.shard_of(start);
    ASSERT_GE(shard, 0);
    EXPECT_LE(start + T + 1, shard_start + c.sizes[static_cast<std::size_t>(shard)]) << "window crosses a shard end";
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(in[static_cast<std::size_t>(r * T + t)], start + t);
      EXPECT_EQ(tg[static_cast<std::size_t>(r * T + t)], start + t + 1);  // targets = inputs shifted by one
    }
  }
}

TEST(TokenLoader, RandomWindowsAreShiftedPairsFromOneShard) {
  Corpus c;
  TokenLoader loader({c.pattern()}, {.batch_size = 4, .seq_len = 16, .seed = 3});
  EXPECT_EQ(loader.num_tokens(), 201);
  EXPECT_EQ(loader.num_windows(), (100 - 16) + (37 - 16) + (64 - 16));
  std::set<int64_t> starts;
  for (int i = 0; i < 50; ++i) {
    Batch b;
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(b.index, i);
    EXPECT_EQ(b.inputs.shape(), (Shape{4, 16}));
    expect_real_windows(c, b, 16);
    starts.insert(b.indices.begin(), b.indices.end());
  }
  // 200 draws over 153 positions reach every shard and many positions.
  EXPECT_GT(starts.size(), 80u);
  std::set<int64_t> shards;
  for (int64_t s : starts) shards.insert(c.shard_of(s).first);
  EXPECT_EQ(shards.size(), 3u);
}

std::vector<std::vector<int64_t>> first_batches(const Corpus& c, TokenLoaderOptions o, int n) {
  TokenLoader loader({c.pattern()}, o);
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < n; ++i) {
    Batch b;
    EXPECT_TRUE(loader.next(b));
    out.push_back(b.indices);
  }
  return out;
}

TEST(TokenLoader, SeededAndIndependentOfPrefetch) {
  Corpus c;
  const TokenLoaderOptions o{.batch_size = 3, .seq_len = 8, .seed = 11};
  TokenLoaderOptions sync = o, other_seed = o;
  sync.prefetch = 0;
  other_seed.seed = 12;
  EXPECT_EQ(first_batches(c, o, 10), first_batches(c, o, 10));
  EXPECT_EQ(first_batches(c, o, 10), first_batches(c, sync, 10));
  EXPECT_NE(first_batches(c, o, 10), first_batches(c, other_seed, 10));
}

TEST(TokenLoader, RanksGetTheirOwnWindows) {
  Corpus c;
  TokenLoaderOptions r0{.batch_size = 4, .seq_len = 8, .seed = 5, .rank = 0, .world_size = 2};
  TokenLoaderOptions r1 = r0;
  r1.rank = 1;
  const auto a = first_batches(c, r0, 20), b = first_batches(c, r1, 20);
  int same = 0;
  for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_EQ(same, 0);
  // Rank r of world w draws element row * w + r: rank 0 of 2 shares its first row with
  // row 0 of a single-rank run with batch 2 * B, rank 1 with row 1.
  TokenLoaderOptions single{.batch_size = 8, .seq_len = 8, .seed = 5};
  const auto s = first_batches(c, single, 20);
  for (std::size_t i = 0; i < s.size(); ++i) {
    for (std::size_t row = 0; row < 4; ++row) {
      EXPECT_EQ(a[i][row], s[i][2 * row]);
      EXPECT_EQ(b[i][row], s[i][2 * row + 1]);
    }
  }
}

TEST(TokenLoader, ResumeFromStateGivesTheSameNextBatch) {
  Corpus c;
  const TokenLoaderOptions o{.batch_size = 2, .seq_len = 8, .seed = 9};
  TokenLoader full({c.pattern()}, o);
  Batch b;
  for (int i = 0; i < 7; ++i) full.next(b);
  const int64_t saved = full.state();
  EXPECT_EQ(saved, 7);
  Batch expected;
  full.next(expected);

  TokenLoader resumed({c.pattern()}, o);
  resumed.next(b);  // something already prefetched must be dropped by set_state
  resumed.set_state(saved);
  Batch got;
  ASSERT_TRUE(resumed.next(got));
  EXPECT_EQ(got.index, 7);
  EXPECT_EQ(values(got.inputs), values(expected.inputs));
  EXPECT_EQ(values(got.targets), values(expected.targets));
  expect_error([&] { resumed.set_state(-1); }, "not a batch position");
}

TEST(TokenLoader, SequentialPassCoversEveryWindowOnce) {
  Corpus c;
  const int64_t T = 10;
  // Windows per shard: (100-1)/10 = 9, (37-1)/10 = 3, (64-1)/10 = 6 -> 18; batches of 4 -> 5, the last short.
  TokenLoader loader({c.pattern()}, {.batch_size = 4, .seq_len = T, .random = false});
  EXPECT_EQ(loader.num_windows(), 18);
  EXPECT_EQ(loader.num_batches(), 5);
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<int64_t> starts;
    Batch b;
    int64_t batches = 0;
    while (loader.next(b)) {
      expect_real_windows(c, b, T);
      EXPECT_EQ(b.inputs.shape()[0], batches < 4 ? 4 : 2);
      starts.insert(starts.end(), b.indices.begin(), b.indices.end());
      ++batches;
    }
    EXPECT_EQ(batches, 5);
    EXPECT_FALSE(loader.next(b));  // stays at the end until reset()
    std::vector<int64_t> expected;
    for (int64_t s = 0; s + T + 1 <= 100; s += T) expected.push_back(s);
    for (int64_t s = 0; s + T + 1 <= 37; s += T) expected.push_back(100 + s);
    for (int64_t s = 0; s + T + 1 <= 64; s += T) expected.push_back(137 + s);
    EXPECT_EQ(starts, expected);
    loader.reset();
  }
}

TEST(TokenLoader, SequentialRanksSplitTheWindowsAndCap) {
  Corpus c;
  // 18 windows, 2 ranks x 4 rows = 8 per step -> 2 full batches, the tail of 2 windows left out.
  std::set<int64_t> seen;
  for (int64_t rank = 0; rank < 2; ++rank) {
    TokenLoader loader({c.pattern()}, {.batch_size = 4, .seq_len = 10, .rank = rank, .world_size = 2, .random = false});
    EXPECT_EQ(loader.num_batches(), 2);
    Batch b;
    while (loader.next(b)) {
      EXPECT_EQ(b.inputs.shape()[0], 4);
      for (int64_t s : b.indices) EXPECT_TRUE(seen.insert(s).second) << "window " << s << " twice";
    }
  }
  EXPECT_EQ(seen.size(), 16u);
  TokenLoader capped({c.pattern()}, {.batch_size = 4, .seq_len = 10, .random = false, .max_batches = 2});
  EXPECT_EQ(capped.num_batches(), 2);
}

TEST(TokenLoader, BadOptionsAndTooLittleData) {
  Corpus c;
  expect_error([&] { TokenLoader l({c.pattern()}, {.batch_size = 0}); }, "batch_size");
  expect_error([&] { TokenLoader l({c.pattern()}, {.rank = 2, .world_size = 2}); }, "rank 2");
  expect_error([&] { TokenLoader l({c.pattern()}, {.seq_len = 100}); }, {"window of seq_len + 1 = 101", "201 tokens"});
  expect_error([&] { TokenLoader l({c.dir.file("nothing_*.bin")}, {}); }, "no file matches");
  write_raw(c.dir.file("train_bad.bin"), 1, 1, 0, 0);
  expect_error([&] { TokenLoader l({c.pattern()}, {.seq_len = 8}); }, {"train_bad.bin", "bad magic"});
}

TEST(TokenLoader, CudaBatchesEqualCpuBatches) {
  if (!cuda_is_available()) GTEST_SKIP() << "no CUDA device";
  Corpus c;
  TokenLoader cpu({c.pattern()}, {.batch_size = 4, .seq_len = 8, .seed = 2});
  TokenLoader gpu({c.pattern()}, {.batch_size = 4, .seq_len = 8, .seed = 2, .device = Device("cuda:0")});
  for (int i = 0; i < 3; ++i) {
    Batch a, b;
    cpu.next(a);
    gpu.next(b);
    EXPECT_TRUE(b.inputs.device().is_cuda());
    EXPECT_EQ(values(a.inputs), values(b.inputs.to(kCPU)));
    EXPECT_EQ(values(a.targets), values(b.targets.to(kCPU)));
  }
}

}  // namespace
}  // namespace kiln
