// The run file formats in tools/io against their definitions and their reference readers:
//   CRC-32C: published check values, a bit-at-a-time reference, incremental use, the TFRecord mask;
//   safetensors: round trips for every dtype (non-contiguous inputs, scalars, empty tensors, CUDA),
//     the exact byte layout, files written by the PyPI `safetensors` package read by kiln and kiln's
//     files read by it (tests/parity/read_safetensors.py), and one clear error per kind of damage;
//   atomic writes: an abandoned or failing write (a file-size limit) leaves the old file intact;
//   TensorBoard: the protobuf bytes of a scalar derived by hand, and TensorBoard's own reader
//     (tests/parity/read_tensorboard.py) checking CRCs and reading back tags, steps and values;
//   metrics.jsonl: one flushed object per line, read back.
// Checkpoints, built on these, are tested in test_checkpoint.cpp.
// Python runs in $KILN_SOURCE_DIR/.venv (scripts/setup.sh); those tests skip without it.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"
#include "tests/gradcheck.h"
#include "tests/io_testing.h"
#include "tests/python_oracle.h"
#include "tests/temp_files.h"
#include "tools/io/atomic_file.h"
#include "tools/io/crc32c.h"
#include "tools/io/jsonl.h"
#include "tools/io/safetensors.h"
#include "tools/io/tensorboard.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using namespace kiln::io;
using nlohmann::json;
using testing::bytes_of;
using testing::crc32c_bitwise;
using testing::expect_no_temporaries;
using testing::FileSizeLimit;
using testing::IoTest;
using testing::read_file;
using testing::throws_with;
using testing::write_file;

// ---------------------------------------------------------------- helpers

// Elements as JSON numbers, exact for every dtype (to_vector<double> would round big int64s);
// JSON has no inf or NaN, so those become "inf", "-inf", "nan", as read_safetensors.py writes them.
json values_of(const Tensor& t) {
  Tensor c = t.detach().cpu().contiguous();
  json out = json::array();
  if (is_floating(c.dtype())) {
    for (double v : c.to_vector<double>()) {
      if (std::isfinite(v)) out.push_back(v);
      else out.push_back(std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    }
  } else {
    KILN_DISPATCH_ALL(c.dtype(), "values_of", [&] {
      const scalar_t* p = c.data<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) out.push_back(static_cast<int64_t>(p[i]));
    });
  }
  return out;
}

// The venv interpreter, or an empty string and the reason it cannot be used.
std::string venv_python(const std::string& imports, std::string* skip_reason) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  const std::string python = (fs::path(src ? src : ".") / ".venv" / "bin" / "python").string();
  *skip_reason = testing::python_unavailable(python, imports, "scripts/setup.sh sets the venv up");
  return skip_reason->empty() ? python : "";
}

// Runs `python script args...`; returns its stdout parsed as JSON, failing with its stderr.
json run_script(const std::string& python, const std::string& script, const std::string& args,
                const fs::path& scratch) {
  const fs::path err = scratch / "stderr.txt";
  const std::string cmd = "'" + python + "' '" + testing::parity_script(script).string() + "' " + args +
                          " 2>'" + err.string() + "'";
  const testing::CommandResult r = testing::run_command(cmd);
  KILN_CHECK(r.ok, r.failure, "\nstderr:\n", read_file(err));
  return json::parse(r.output);
}

// ---------------------------------------------------------------- CRC-32C

TEST(Crc32c, PublishedCheckValues) {
  EXPECT_EQ(crc32c(""), 0u);
  // The "check" value of CRC-32C in the CRC catalogue (reveng.sourceforge.io/crc-catalogue).
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  // RFC 3720 (iSCSI), appendix B.4: 32 bytes of 0x00, of 0xFF, ascending 0..31, descending 31..0.
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down), 0x113FDB5Cu);
}

TEST(Crc32c, MatchesBitwiseDefinitionAtEveryLengthAlignmentAndSplit) {
  std::mt19937 rng(7);
  std::string buffer(300, '\0');
  for (char& c : buffer) c = static_cast<char>(rng());
  for (size_t start = 0; start < 8; ++start) {  // the 8-byte loop must not care about alignment
    for (size_t len = 0; len <= 200; ++len) {
      const std::string s = buffer.substr(start, len);
      const uint32_t want = crc32c_bitwise(s);
      ASSERT_EQ(crc32c(buffer.data() + start, len), want) << "start " << start << " length " << len;
      const size_t cut = len / 3;
      ASSERT_EQ(crc32c(s.substr(cut), crc32c(s.substr(0, cut))), want) << "split at " << cut;
    }
  }
}

TEST(Crc32c, TfRecordMask) {
  // rotate right by 15: 0xE3069283 >> 15 = 0x0001C60D; its low 15 bits 0x1283 << 17 = 0x25060000;
  // OR: 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (no carry past 32 bits).
  EXPECT_EQ(masked_crc32c(0xE3069283u), 0xC78AB0E5u);
  // Wrap-around: 0 rotated is 0, so the mask is the constant itself.
  EXPECT_EQ(masked_crc32c(0u), 0xA282EAD8u);
}

// ---------------------------------------------------------------- safetensors

// One tensor of every dtype, with edge values, including views that are not contiguous.
NamedTensors every_dtype() {
  const double inf = std::numeric_limits<double>::infinity();
  Tensor grid = from_vector(std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  return {
      {"f32.transposed", grid.t()},                                         // strides (1, 4)
      {"f16", from_vector(std::vector<double>{-0.0, 65504, 6e-8, -1.5, inf, std::nan("")}, {6},
                         {.dtype = DType::f16})},
      {"bf16", from_vector(std::vector<double>{1.0 / 3, -3e38, 1e-40, 7, -inf, 0.5}, {2, 3},
                           {.dtype = DType::bf16})},
      {"f64.sliced", from_vector(std::vector<double>{M_PI, -1e300, 5e-324, 2, 3, 4}, {6},
                                 {.dtype = DType::f64}).slice(0, 0, 6, 2)},  // stride 2
      {"i32", from_vector(std::vector<int64_t>{-2147483648LL, -1, 0, 2147483647}, {2, 2},
                          {.dtype = DType::i32})},
      {"i64.expanded", from_vector(std::vector<int64_t>{-(1LL << 62), (1LL << 53) + 1}, {2, 1})
                           .expand({2, 3})},                                 // stride 0
      {"u8", from_vector(std::vector<int64_t>{0, 1, 128, 255}, {4}, {.dtype = DType::u8})},
      {"bool", from_vector(std::vector<double>{1, 0, 0, 1, 1, 1}, {3, 2}, {.dtype = DType::b8})},
      {"scalar", scalar_tensor(-2.5)},
      {"empty", zeros({0, 3})},
  };
}

TEST_F(IoTest, SafetensorsRoundTripsEveryDtypeAndLayout) {
  const NamedTensors written = every_dtype();
  const SafetensorsMetadata metadata{{"author", "kiln"}, {"quote\"and\nnewline", "é 中"}};
  const fs::path path = dir_ / "all.safetensors";
  save_safetensors(path, written, metadata);

  const SafetensorsContents read = load_safetensors(path);
  EXPECT_EQ(read.metadata, metadata);
  ASSERT_EQ(read.tensors.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    const auto& [name, want] = written[i];
    const Tensor& got = read.tensors[i].second;
    EXPECT_EQ(read.tensors[i].first, name) << "tensors come back in the order written";
    EXPECT_EQ(got.dtype(), want.dtype()) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    EXPECT_TRUE(got.is_contiguous()) << name;
    EXPECT_EQ(bytes_of(got), bytes_of(want)) << name << ": bytes differ";
  }
  // The non-contiguous views were stored by value, row-major: transposed grid row 0 = 0, 4, 8.
  EXPECT_EQ(values_of(read.tensors[0].second)[1], 4.0);
  EXPECT_EQ(values_of(read.tensors[3].second), json({M_PI, 5e-324, 3.0}));
}

TEST_F(IoTest, SafetensorsByteLayout) {
  const fs::path path = dir_ / "layout.safetensors";
  save_safetensors(path, {{"a", from_vector(std::vector<float>{1, 2, 3}, {3})},
                          {"b", from_vector(std::vector<int64_t>{-1}, {1})}},
                   {{"k", "v"}});
  const std::string file = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  ASSERT_EQ(file.size(), 8 + n + 3 * 4 + 8) << "8-byte length + header + 12 + 8 data bytes";
  const std::string header = file.substr(8, n);
  const std::string padding = header.substr(header.rfind('}') + 1);
  EXPECT_EQ(padding, std::string(padding.size(), ' ')) << "only spaces after the JSON";
  EXPECT_LT(padding.size(), 8u);
  const json h = json::parse(header);
  EXPECT_EQ(h["__metadata__"], json({{"k", "v"}}));
  EXPECT_EQ(h["a"], json({{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}}));
  EXPECT_EQ(h["b"], json({{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {12, 20}}}));
  float a[3];
  std::memcpy(a, file.data() + 8 + n, 12);
  EXPECT_EQ(a[0], 1.0f);
  EXPECT_EQ(a[2], 3.0f);
}

TEST_F(IoTest, SafetensorsWritesCudaTensorsFromHostCopies) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor host = from_vector(std::vector<double>{1, -2, 3.5, 4, 5, 6}, {2, 3}, {.dtype = DType::bf16});
  const fs::path path = dir_ / "cuda.safetensors";
  save_safetensors(path, {{"w", host.to(Device("cuda:0")).t()}});
  const SafetensorsContents read = load_safetensors(path);
  EXPECT_TRUE(read.tensors[0].second.device().is_cpu());
  EXPECT_EQ(bytes_of(read.tensors[0].second), bytes_of(host.t()));
}

TEST_F(IoTest, SafetensorsReferenceReadsKilnFiles) {
  std::string skip;
  const std::string python = venv_python("safetensors, torch", &skip);
  if (python.empty()) GTEST_SKIP() << skip;
  const NamedTensors written = every_dtype();
  const SafetensorsMetadata metadata{{"step", "12"}, {"note", "é"}};
  const fs::path path = dir_ / "kiln.safetensors";
  save_safetensors(path, written, metadata);

  const json seen = run_script(python, "read_safetensors.py", "read '" + path.string() + "'", dir_);
  EXPECT_EQ(seen["metadata"], json(metadata));
  ASSERT_EQ(seen["tensors"].size(), written.size());
  for (const auto& [name, want] : written) {
    const json* found = nullptr;
    for (const json& t : seen["tensors"])
      if (t["name"] == name) found = &t;
    ASSERT_NE(found, nullptr) << name << " missing";
    EXPECT_EQ((*found)["dtype"], safetensors_dtype_name(want.dtype())) << name;
    EXPECT_EQ((*found)["shape"], json(want.shape())) << name;
    EXPECT_EQ((*found)["values"], values_of(want)) << name;
  }
}

TEST_F(IoTest, SafetensorsKilnReadsReferenceFiles) {
  std::string skip;
  const std::string python = venv_python("safetensors, torch", &skip);
  if (python.empty()) GTEST_SKIP() << skip;
  const fs::path path = dir_ / "python.safetensors";
  const json wrote = run_script(python, "read_safetensors.py", "write '" + path.string() + "'", dir_);

  const SafetensorsContents read = load_safetensors(path);
  EXPECT_EQ(json(read.metadata), wrote["metadata"]);
  ASSERT_EQ(read.tensors.size(), wrote["tensors"].size());
  for (const json& want : wrote["tensors"]) {
    const std::string name = want["name"];
    const Tensor* got = nullptr;
    for (const auto& [n, t] : read.tensors)
      if (n == name) got = &t;
    ASSERT_NE(got, nullptr) << name << " missing";
    EXPECT_EQ(safetensors_dtype_name(got->dtype()), want["dtype"].get<std::string>()) << name;
    EXPECT_EQ(json(got->shape()), want["shape"]) << name;
    EXPECT_EQ(values_of(*got), want["values"]) << name;
  }
}

// A safetensors file assembled by hand, so each test can break one rule.
std::string raw_file(const std::string& header, const std::string& buffer) {
  const uint64_t n = header.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + header + buffer;
}

TEST_F(IoTest, SafetensorsDamageGivesOneClearError) {
  const fs::path good = dir_ / "good.safetensors";
  save_safetensors(good, {{"w", from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2})},
                          {"b", from_vector(std::vector<float>{5, 6}, {2})}});
  const std::string bytes = read_file(good);
  const fs::path bad = dir_ / "bad.safetensors";
  auto load_bad = [&](const std::string& contents, const std::vector<std::string>& parts) {
    write_file(bad, contents);
    std::vector<std::string> all = parts;
    all.push_back(bad.string());  // every error names the file
    return throws_with([&] { load_safetensors(bad); }, all);
  };
  const std::string eight_floats(32, '\0');

  EXPECT_TRUE(load_bad(bytes.substr(0, bytes.size() - 3), {"truncated", "tensor 'b'"}));
  EXPECT_TRUE(load_bad(bytes.substr(0, 5), {"too short"}));
  std::string huge = bytes;
  huge[7] = '\x01';  // header length 2^56 + ...
  EXPECT_TRUE(load_bad(huge, {"header length", "exceeds the file size"}));
  EXPECT_TRUE(load_bad(raw_file("{\"w\": {\"dtype\": \"F32\",", eight_floats), {"not valid JSON"}));
  EXPECT_TRUE(load_bad(raw_file("[1, 2]", ""), {"must be a JSON object"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                                std::string(24, '\0')),
                       {"tensor 'b'", "overlaps tensor 'a'"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}})",
                                eight_floats),
                       {"gap", "tensor 'b'"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                eight_floats),
                       {"trailing bytes"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F8_E4M3", "shape": [32], "data_offsets": [0, 32]}})",
                                eight_floats),
                       {"tensor 'a'", "unknown dtype 'F8_E4M3'", "known: F32, F16, BF16"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F64", "shape": [2, 3], "data_offsets": [0, 32]}})",
                                eight_floats),
                       {"tensor 'a'", "needs 48 bytes", "span 32"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [-8], "data_offsets": [0, 32]}})",
                                eight_floats),
                       {"tensor 'a'", "shape entry must be a non-negative integer"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
                                    "a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})",
                                eight_floats),
                       {"duplicate key 'a'"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [8], "offsets": [0, 32]}})",
                                eight_floats),
                       {"tensor 'a'", "unknown key 'offsets'"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"__metadata__": {"n": 3}})", ""), {"__metadata__ 'n'", "string"}));
  EXPECT_TRUE(load_bad(raw_file(R"({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}})",
                                std::string("\x01\x02", 2)),
                       {"tensor 'm'", "BOOL", "byte 2"}));
  EXPECT_TRUE(throws_with([&] { load_safetensors(dir_ / "missing.safetensors"); },
                          {"cannot open", "missing.safetensors"}));
}

TEST_F(IoTest, SafetensorsWriterRefusesAmbiguousNames) {
  const Tensor t = zeros({1});
  const fs::path path = dir_ / "names.safetensors";
  EXPECT_TRUE(throws_with([&] { save_safetensors(path, {{"x", t}, {"x", t}}); },
                          {path.string(), "two tensors are called 'x'"}));
  EXPECT_TRUE(throws_with([&] { save_safetensors(path, {{"__metadata__", t}}); }, {path.string()}));
  EXPECT_FALSE(fs::exists(path));
}

// ---------------------------------------------------------------- atomic writes

TEST_F(IoTest, AtomicWriteReplacesWholeFileOrNothing) {
  const fs::path path = dir_ / "state.txt";
  write_file_atomic(path, "old contents");
  {
    AtomicFileWriter writer(path);
    writer.write("half of the new");
    EXPECT_TRUE(fs::exists(writer.temp_path()));
    EXPECT_EQ(read_file(path), "old contents") << "target untouched before commit";
  }  // abandoned, as when an exception unwinds the stack
  EXPECT_EQ(read_file(path), "old contents");
  expect_no_temporaries(dir_);

  write_file_atomic(path, "new");
  EXPECT_EQ(read_file(path), "new");
  expect_no_temporaries(dir_);
}

TEST_F(IoTest, AtomicWriteThatFailsMidwayKeepsTheOldFile) {
  const fs::path path = dir_ / "weights.safetensors";
  const Tensor old = from_vector(std::vector<float>{1, 2, 3}, {3});
  save_safetensors(path, {{"w", old}});
  const std::string before = read_file(path);
  {
    FileSizeLimit limit(1024);  // the new file needs 40 KB
    EXPECT_TRUE(throws_with([&] { save_safetensors(path, {{"w", zeros({10000})}}); },
                            {"cannot write", path.string()}));
  }
  EXPECT_EQ(read_file(path), before);
  expect_no_temporaries(dir_);
}

// ---------------------------------------------------------------- TensorBoard

// Splits a TFRecord file into its records, checking the framing (not the CRCs: Python does).
std::vector<std::string> tfrecords(const std::string& file) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos + 12 <= file.size()) {
    uint64_t n = 0;
    std::memcpy(&n, file.data() + pos, 8);
    if (pos + 16 + n > file.size()) break;
    out.push_back(file.substr(pos + 12, n));
    pos += 16 + n;
  }
  EXPECT_EQ(pos, file.size()) << "records must tile the file";
  return out;
}

TEST_F(IoTest, TensorBoardScalarEventBytes) {
  const double t0 = static_cast<double>(std::time(nullptr));
  fs::path path;
  {
    SummaryWriter writer(dir_ / "run");
    writer.add_scalar("a", 1.0, 1);
    path = writer.path();
  }
  const double t1 = static_cast<double>(std::time(nullptr)) + 1;
  EXPECT_EQ(path.parent_path(), dir_ / "run");
  const std::string name = path.filename().string();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_EQ(name.substr(name.size() - std::strlen(host)), host) << name;

  const std::vector<std::string> records = tfrecords(read_file(path));
  ASSERT_EQ(records.size(), 2u);
  // Record 1: 0x09 + wall_time (8 bytes), then file_version (field 3, wire type 2): key 0x1a,
  // length 13, "brain.Event:2".
  EXPECT_EQ(records[0].substr(9), std::string("\x1a\x0d") + "brain.Event:2");
  // Record 2: key 0x09 (field 1, fixed64) + 8 bytes of wall_time; step: key 0x10 (field 2,
  // varint), 0x01; summary: key 0x2a (field 5, length-delimited), length 10, holding
  //   Summary.value: key 0x0a, length 8, holding
  //     Value.tag: key 0x0a, length 1, 'a'; Value.simple_value: key 0x15 (field 2, fixed32),
  //     1.0f = 0x3F800000 little-endian: 00 00 80 3f.
  const std::string tail("\x10\x01\x2a\x0a\x0a\x08\x0a\x01" "a" "\x15\x00\x00\x80\x3f", 14);
  ASSERT_EQ(records[1].size(), 9 + tail.size());
  EXPECT_EQ(records[1][0], '\x09');
  EXPECT_EQ(records[1].substr(9), tail);
  double wall = 0;
  std::memcpy(&wall, records[1].data() + 1, 8);
  EXPECT_GE(wall, t0);
  EXPECT_LE(wall, t1);
}

TEST_F(IoTest, TensorBoardReadsKilnScalars) {
  std::string skip;
  const std::string python = venv_python("tensorboard", &skip);
  if (python.empty()) GTEST_SKIP() << skip;
  struct Point { std::string tag; int64_t step; double value; };
  // A negative step (a ten-byte varint) first, since EventAccumulator drops points that go back
  // in step; 2^40 + 3 needs a six-byte varint; values that are not floats get rounded to float.
  const std::vector<Point> points = {
      {"train/loss", -5, 2.25},      {"train/loss", 0, 2.3025850929940455}, {"lr", 0, 3e-4},
      {"train/loss", 1, 1.5},        {"lr", 1, 2.9e-4},                     {"train/loss", 100, -0.0},
      {"lr", 1099511627779, 1e-38},  {"train/loss", 1099511627779, 1e30},
  };
  const double t0 = static_cast<double>(std::time(nullptr));
  const fs::path run = dir_ / "run";
  {
    SummaryWriter writer(run);
    for (const Point& p : points) writer.add_scalar(p.tag, p.value, p.step);
    writer.flush();
  }
  const double t1 = static_cast<double>(std::time(nullptr)) + 1;

  const json seen = run_script(python, "read_tensorboard.py", "'" + run.string() + "'", dir_);
  EXPECT_EQ(seen["files"].size(), 1u);
  EXPECT_EQ(seen["file_version"], "brain.Event:2");
  EXPECT_EQ(seen["records"], points.size() + 1);
  ASSERT_EQ(seen["raw"].size(), points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    const json& r = seen["raw"][i];
    EXPECT_EQ(r[0], points[i].tag);
    EXPECT_EQ(r[1], points[i].step);
    EXPECT_EQ(r[2].get<double>(), static_cast<double>(static_cast<float>(points[i].value))) << i;
    EXPECT_GE(r[3].get<double>(), t0);
    EXPECT_LE(r[3].get<double>(), t1);
  }
  for (const char* tag : {"train/loss", "lr"}) {
    json want = json::array();
    for (const Point& p : points)
      if (p.tag == tag) want.push_back({p.step, static_cast<double>(static_cast<float>(p.value))});
    json got = json::array();
    for (const json& e : seen["scalars"][tag]) got.push_back({e[0], e[1]});
    EXPECT_EQ(got, want) << tag;
  }
}

// ---------------------------------------------------------------- metrics.jsonl

TEST_F(IoTest, JsonlOneFlushedObjectPerLine) {
  const fs::path path = dir_ / "logs" / "metrics.jsonl";
  const json a = {{"step", 1}, {"train/loss", 2.5}, {"lr", 3e-4}};
  const json b = {{"step", 2}, {"eval/accuracy", 0.875}, {"note", "a\nb"}};
  {
    JsonlWriter log(path);
    log.write(a);
    log.write(b);
    // Flushed per line: another reader sees both lines while the writer is still open.
    EXPECT_EQ(read_jsonl(path), std::vector<json>({a, b}));
    const std::string text = read_file(path);
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << "the newline in a string is escaped";
    log.write({{"step", 3}, {"loss", std::nan("")}});
    EXPECT_TRUE(throws_with([&] { log.write(json::array({1, 2})); }, {path.string(), "JSON object"}));
  }
  EXPECT_EQ(read_jsonl(path).back(), json({{"step", 3}, {"loss", nullptr}})) << "NaN becomes null";
  JsonlWriter(path).write({{"step", 4}});  // append mode continues the log
  EXPECT_EQ(read_jsonl(path).size(), 4u);
  JsonlWriter(path, JsonlWriter::Mode::truncate).write({{"step", 0}});
  EXPECT_EQ(read_jsonl(path), std::vector<json>({{{"step", 0}}}));

  write_file(path, "{\"step\": 1}\n{\"step\": \n");
  EXPECT_TRUE(throws_with([&] { read_jsonl(path); }, {path.string() + ":2", "not valid JSON"}));
}

}  // namespace
}  // namespace kiln
