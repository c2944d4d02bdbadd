// tools/plot.py on a small fake run directory: it writes loss.png, accuracy.png and lr.png (to the
// run directory or --out), skips a plot whose metrics are missing, and fails with exit code 1 and
// the file's name when metrics.jsonl is missing or malformed. Runs Debian's /usr/bin/python3; the
// plotting cases skip when it cannot import matplotlib (scripts/setup.sh installs python3-matplotlib).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/python_oracle.h"
#include "tests/temp_files.h"

namespace {

namespace fs = std::filesystem;
const char* kPython = "/usr/bin/python3";

using Result = kiln::testing::CommandResult;
using kiln::testing::write_file;

// Runs `/usr/bin/python3 tools/plot.py ARGS`.
Result run_plot(const std::string& args) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  const fs::path script = fs::path(src ? src : ".") / "tools" / "plot.py";
  return kiln::testing::run_command(std::string(kPython) + " '" + script.string() + "' " + args + " 2>&1");
}

// A real PNG: the 8-byte signature and more than a header's worth of bytes.
bool is_png(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string head(8, '\0');
  if (!in.read(head.data(), 8)) return false;
  return head == "\x89PNG\r\n\x1a\n" && fs::file_size(p) > 1000;
}

// Lines as the trainer writes them: train metrics every 10 steps, an evaluation every 20 and at
// the end; step 30 logged twice as after a resume; a blank line, which readers skip.
const char* kMetrics =
    R"({"step":10,"train/loss":2.1,"train/lr":0.001,"train/samples_per_s":5000.0}
{"step":20,"train/loss":1.2,"train/lr":0.0009,"train/samples_per_s":5100.0,"train/grad_norm":1.5}
{"eval/accuracy":0.61,"eval/loss":1.3,"step":20}
{"step":30,"train/loss":0.9,"train/lr":0.0006,"train/samples_per_s":5050.0}
{"step":30,"train/loss":0.8,"train/lr":0.0006,"train/samples_per_s":4900.0}

{"step":40,"train/loss":0.7,"train/lr":0.0002,"train/samples_per_s":5200.0}
{"eval/accuracy":0.74,"eval/loss":0.75,"step":40}
)";

class PlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " not found";
    dir_ = fs::temp_directory_path() / ("kiln_plot_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "run");
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  static bool has_matplotlib() {
    return std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") == 0;
  }

  fs::path dir_;
};

#define REQUIRE_MATPLOTLIB()                                                                       \
  if (!has_matplotlib())                                                                           \
  GTEST_SKIP() << kPython << " cannot import matplotlib (scripts/setup.sh installs python3-matplotlib)"

TEST_F(PlotTest, WritesThePlotsIntoTheRunDirectory) {
  REQUIRE_MATPLOTLIB();
  const fs::path run = dir_ / "run";
  write_file(run / "metrics.jsonl", kMetrics);
  const Result r = run_plot("'" + run.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* name : {"loss.png", "accuracy.png", "lr.png"}) {
    EXPECT_TRUE(is_png(run / name)) << name << " missing or not a PNG; output:\n" << r.output;
    EXPECT_NE(r.output.find((run / name).string()), std::string::npos) << r.output;
  }
}

TEST_F(PlotTest, OutWritesThePlotsElsewhere) {
  REQUIRE_MATPLOTLIB();
  const fs::path run = dir_ / "run", out = dir_ / "plots" / "nested";
  write_file(run / "metrics.jsonl", kMetrics);
  const Result r = run_plot("'" + run.string() + "' --out '" + out.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* name : {"loss.png", "accuracy.png", "lr.png"}) {
    EXPECT_TRUE(is_png(out / name)) << name << "; output:\n" << r.output;
    EXPECT_FALSE(fs::exists(run / name)) << name;
  }
}

TEST_F(PlotTest, SkipsAccuracyBeforeTheFirstEvaluation) {
  REQUIRE_MATPLOTLIB();
  const fs::path run = dir_ / "run";
  write_file(run / "metrics.jsonl", R"({"step":10,"train/loss":2.1,"train/lr":0.001}
{"step":20,"train/loss":null,"train/lr":0.0009}
{"step":30,"train/loss":1.2,"train/lr":0.0008}
)");  // kiln writes a NaN loss as null: plotted as a gap, not an error
  const Result r = run_plot("'" + run.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(is_png(run / "loss.png")) << r.output;
  EXPECT_TRUE(is_png(run / "lr.png")) << r.output;
  EXPECT_FALSE(fs::exists(run / "accuracy.png"));
  EXPECT_NE(r.output.find("accuracy.png: skipped (no eval/accuracy"), std::string::npos) << r.output;
}

// The error cases fail before matplotlib is imported, so they run without it.
TEST_F(PlotTest, MissingMetricsFailsNamingTheFile) {
  const Result r = run_plot("'" + (dir_ / "run").string() + "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find((dir_ / "run" / "metrics.jsonl").string() + ": not found"), std::string::npos)
      << r.output;
}

TEST_F(PlotTest, MalformedMetricsFailsNamingFileAndLine) {
  const fs::path file = dir_ / "run" / "metrics.jsonl";
  const std::pair<const char*, const char*> cases[] = {
      {"{\"step\":10,\"train/loss\":2.1}\n{\"step\":20,\"train/loss\":\n", ":2: not valid JSON"},
      {"[1, 2]\n", ":1: expected a JSON object, got list"},
      {"{\"train/loss\":2.1}\n", ":1: expected an integer \"step\""},
      {"{\"step\":10,\"train/loss\":\"low\"}\n", ":1: \"train/loss\" should be a number"},
      {"\n\n", ": no metrics recorded yet"},
  };
  for (const auto& [text, expected] : cases) {
    write_file(file, text);
    const Result r = run_plot("'" + (dir_ / "run").string() + "'");
    EXPECT_EQ(r.exit_code, 1) << text << "\n" << r.output;
    EXPECT_NE(r.output.find(file.string() + expected), std::string::npos) << text << "\n" << r.output;
    EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
  }
}

}  // namespace
