// Checkpoints (tools/io/checkpoint.h): round trip, the recorded checksum against the file's bytes,
// keep_last_k, a truncated newest checkpoint skipped with a warning, a flipped byte refused, a
// failed save. The file format underneath is tested in test_io.cpp.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"
#include "tests/io_testing.h"
#include "tests/temp_files.h"
#include "tools/io/checkpoint.h"
#include "tools/io/safetensors.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using namespace kiln::io;
using testing::bytes_of;
using testing::crc32c_bitwise;
using testing::expect_no_temporaries;
using testing::FileSizeLimit;
using testing::IoTest;
using testing::read_file;
using testing::throws_with;
using testing::write_file;

CheckpointContents sample_checkpoint(double scale) {
  CheckpointContents c;
  c.model = {{"fc1.weight", from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3}) * scale},
             {"fc1.bias", from_vector(std::vector<double>{-1, 1}, {2}, {.dtype = DType::bf16})},
             {"bn.num_batches_tracked", from_vector(std::vector<int64_t>{42}, {})}};
  c.optim = {{"fc1.weight.exp_avg", full({2, 3}, 0.25 * scale)}, {"fc1.weight.exp_avg_sq", zeros({3, 2}).t()}};
  c.rng_seed = 0xFFFFFFFFFFFFFFFFull;  // uint64 values beyond int64 survive the JSON
  c.rng_offset = 123456789012345ull;
  c.data_loader = {{"epoch", 3}, {"position", 1024}, {"permutation_seed", 9}};
  c.extra = {{"scheduler", {{"last_step", 99}}}, {"optimizer_step", 100}};
  c.config = "model: mlp\nlr: 0.001  # \"quoted\" é\n";
  return c;
}

void expect_same(const NamedTensors& got, const NamedTensors& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_EQ(got[i].second.dtype(), want[i].second.dtype()) << want[i].first;
    EXPECT_EQ(got[i].second.shape(), want[i].second.shape()) << want[i].first;
    EXPECT_EQ(bytes_of(got[i].second), bytes_of(want[i].second)) << want[i].first;
  }
}

TEST_F(IoTest, CheckpointRoundTripsEverythingAndRecordsTheDataChecksum) {
  const CheckpointContents saved = sample_checkpoint(1.0);
  const fs::path path = save_checkpoint(dir_ / "ckpt", 100, saved, 3);
  EXPECT_EQ(path, dir_ / "ckpt" / "ckpt-100.safetensors");

  const CheckpointContents loaded = load_checkpoint(path);
  EXPECT_EQ(loaded.step, 100);
  expect_same(loaded.model, saved.model);
  expect_same(loaded.optim, saved.optim);
  EXPECT_EQ(loaded.rng_seed, saved.rng_seed);
  EXPECT_EQ(loaded.rng_offset, saved.rng_offset);
  EXPECT_EQ(loaded.data_loader, saved.data_loader);
  EXPECT_EQ(loaded.extra, saved.extra);
  EXPECT_EQ(loaded.config, saved.config);

  // A plain safetensors file: the prefixed names, and a checksum equal to the CRC-32C of the
  // bytes after the header, computed here from the raw file.
  const SafetensorsContents file = load_safetensors(path);
  EXPECT_EQ(file.tensors[0].first, "model.fc1.weight");
  EXPECT_EQ(file.tensors[3].first, "optim.fc1.weight.exp_avg");
  const std::string raw = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", crc32c_bitwise(raw.substr(8 + n)));
  EXPECT_EQ(file.metadata.at("checksum"), hex);
  EXPECT_EQ(file.metadata.at("step"), "100");
}

std::vector<int64_t> steps_in(const fs::path& dir) {
  std::vector<int64_t> steps;
  for (const auto& [step, path] : list_checkpoints(dir)) steps.push_back(step);
  return steps;
}

TEST_F(IoTest, CheckpointKeepsTheLastK) {
  const CheckpointContents c = sample_checkpoint(1.0);
  for (int64_t step : {10, 20, 30, 40, 50}) save_checkpoint(dir_, step, c, 2);
  EXPECT_EQ(steps_in(dir_), (std::vector<int64_t>{40, 50}));
  // Saving an earlier step (a rerun from an older checkpoint) keeps it and leaves later ones.
  save_checkpoint(dir_, 5, c, 2);
  EXPECT_EQ(steps_in(dir_), (std::vector<int64_t>{5, 40, 50}));
  for (int64_t step : {60, 70}) save_checkpoint(dir_, step, c, 0);  // 0: keep everything
  EXPECT_EQ(steps_in(dir_), (std::vector<int64_t>{5, 40, 50, 60, 70}));
  save_checkpoint(dir_, 80, c, 1);
  EXPECT_EQ(steps_in(dir_), (std::vector<int64_t>{80}));
  expect_no_temporaries(dir_);
}

TEST_F(IoTest, LatestValidCheckpointSkipsATruncatedOneWithAWarning) {
  EXPECT_EQ(latest_valid_checkpoint(dir_ / "absent"), std::nullopt);
  EXPECT_EQ(latest_valid_checkpoint(dir_), std::nullopt);
  save_checkpoint(dir_, 9, sample_checkpoint(1.0), 0);   // 9 < 10 < 200: numeric, not text, order
  save_checkpoint(dir_, 10, sample_checkpoint(2.0), 0);
  const fs::path newest = save_checkpoint(dir_, 200, sample_checkpoint(3.0), 0);
  write_file(dir_ / "ckpt-300.safetensors.tmp.4242", "a crashed save");  // not a checkpoint
  EXPECT_EQ(latest_valid_checkpoint(dir_), newest);

  const std::string bytes = read_file(newest);
  write_file(newest, bytes.substr(0, bytes.size() - 10));
  ::testing::internal::CaptureStderr();
  const auto found = latest_valid_checkpoint(dir_);
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(found, dir_ / "ckpt-10.safetensors");
  EXPECT_NE(warning.find("skipping checkpoint " + newest.string()), std::string::npos) << warning;
  EXPECT_NE(warning.find("truncated"), std::string::npos) << warning;
  EXPECT_EQ(load_checkpoint(*found).model[0].second.to_vector<double>()[0], 2.0);
}

TEST_F(IoTest, CheckpointWithAFlippedByteFailsItsChecksum) {
  const fs::path path = save_checkpoint(dir_, 7, sample_checkpoint(1.0), 0);
  std::string bytes = read_file(path);
  bytes[bytes.size() - 5] ^= 0x10;  // inside the last tensor's data
  write_file(path, bytes);
  EXPECT_TRUE(throws_with([&] { load_checkpoint(path); }, {path.string(), "checksum mismatch", "corrupt"}));
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(latest_valid_checkpoint(dir_), std::nullopt);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("checksum mismatch"), std::string::npos);

  const fs::path plain = dir_ / "plain.safetensors";
  save_safetensors(plain, {{"model.w", zeros({1})}});
  EXPECT_TRUE(throws_with([&] { load_checkpoint(plain); }, {plain.string(), "not a kiln checkpoint"}));
}

TEST_F(IoTest, FailedCheckpointSaveLeavesPreviousCheckpointsIntact) {
  const CheckpointContents small = sample_checkpoint(1.0);
  save_checkpoint(dir_, 5, small, 0);
  save_checkpoint(dir_, 6, small, 0);
  const std::string before = read_file(checkpoint_path(dir_, 6));
  CheckpointContents big = sample_checkpoint(2.0);
  big.model.emplace_back("embedding", zeros({256, 64}));  // 64 KB
  {
    FileSizeLimit limit(4096);
    EXPECT_TRUE(throws_with([&] { save_checkpoint(dir_, 6, big, 1); }, {"ckpt-6.safetensors"}));
  }
  EXPECT_EQ(read_file(checkpoint_path(dir_, 6)), before) << "old file replaced by a failed save";
  EXPECT_EQ(steps_in(dir_), (std::vector<int64_t>{5, 6})) << "keep_last_k ran after a failed save";
  expect_no_temporaries(dir_);
  EXPECT_EQ(latest_valid_checkpoint(dir_), checkpoint_path(dir_, 6));
}

}  // namespace
}  // namespace kiln
