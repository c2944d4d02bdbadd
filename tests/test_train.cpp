// The runner end to end on Fashion-MNIST (from the dataset-fashion-mnist package): loss falls,
// a resumed run is bit-identical to an uninterrupted one, and bad input fails clearly without
// overwriting anything.
#include <gtest/gtest.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tests/kiln_cli.h"
#include "tests/temp_files.h"
#include "tools/config.h"
#include "tools/io/checkpoint.h"
#include "tools/io/jsonl.h"
#include "tools/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
const char* kDataDir = "/usr/share/datasets/fashion-mnist";

class TrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(fs::path(kDataDir) / "train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "Fashion-MNIST not installed (scripts/setup.sh installs dataset-fashion-mnist)";
    dir_ = fs::temp_directory_path() / ("kiln_train_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A small, fast CPU run.
  Config tiny(const std::string& run) const {
    Config cfg;
    for (const char* o : {"model.hidden_sizes=[32]", "model.dropout=0.1", "data.batch_size=32",
                          "data.eval_batch_size=2000", "train.steps=40", "train.log_every=5",
                          "train.eval_every=0", "checkpoint.every=20", "schedule.warmup_steps=5",
                          "device=cpu", "data.prefetch=1"})
      cfg.set_override(o);
    cfg.set_override("log.run_dir=" + (dir_ / run).string());
    return cfg;
  }

  fs::path dir_;
};

TEST_F(TrainTest, LossFallsAndAccuracyRises) {
  const TrainSummary s = train(tiny("run"));
  EXPECT_EQ(s.steps, 40);
  const auto lines = io::read_jsonl(s.run_dir / "metrics.jsonl");
  std::vector<double> losses;
  for (const auto& l : lines) {
    if (!l.contains("train/loss")) continue;
    losses.push_back(l["train/loss"].get<double>());
    // Every log line carries the step, lr, throughput and the global gradient norm.
    EXPECT_TRUE(l.contains("step") && l.contains("train/lr") && l.contains("train/samples_per_s")) << l.dump();
    ASSERT_TRUE(l.contains("train/grad_norm")) << l.dump();
    EXPECT_GT(l["train/grad_norm"].get<double>(), 0.0);
  }
  ASSERT_GE(losses.size(), 4u);
  EXPECT_LT(losses.back(), 0.6 * losses.front()) << "first " << losses.front() << " last " << losses.back();
  EXPECT_GT(s.test_accuracy, 0.6);  // 10 classes: chance is 0.1
  EXPECT_TRUE(fs::exists(s.run_dir / "config.yaml"));
  EXPECT_TRUE(fs::exists(io::checkpoint_path(s.run_dir / "checkpoints", 40)));
  bool has_events = false;
  for (const auto& e : fs::directory_iterator(s.run_dir))
    has_events = has_events || e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_TRUE(has_events);
}

TEST_F(TrainTest, ResumedRunIsBitIdenticalOnCpu) {
  const TrainSummary full = train(tiny("full"));
  const auto final_full = io::load_checkpoint(io::checkpoint_path(full.run_dir / "checkpoints", 40));

  // Same config, but the run only got to step 20: drop the later checkpoint and resume.
  fs::copy(full.run_dir, dir_ / "resumed", fs::copy_options::recursive);
  fs::remove(io::checkpoint_path(dir_ / "resumed" / "checkpoints", 40));
  Config cfg = tiny("resumed");
  cfg.set_override("train.resume=auto");
  const TrainSummary resumed = train(cfg);
  EXPECT_EQ(resumed.steps, 40);
  const auto final_resumed = io::load_checkpoint(io::checkpoint_path(resumed.run_dir / "checkpoints", 40));

  ASSERT_EQ(final_full.model.size(), final_resumed.model.size());
  for (size_t i = 0; i < final_full.model.size(); ++i) {
    const Tensor& a = final_full.model[i].second;
    const Tensor& b = final_resumed.model[i].second;
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * a.element_size()))
        << final_full.model[i].first << " differs after resume";
  }
  EXPECT_EQ(final_full.rng_offset, final_resumed.rng_offset);
}

// ---- bad input through the real binary: one clear message, non-zero exit, nothing overwritten

using testing::CommandResult;
using testing::run_kiln_shell;

TEST_F(TrainTest, CliRejectsUnknownKeyAndWrongType) {
  std::ofstream(dir_ / "c.yaml") << "optim:\n  lrr: 0.1\n";
  CommandResult r = run_kiln_shell("train " + (dir_ / "c.yaml").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("c.yaml:2: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"), std::string::npos) << r.output;
  r = run_kiln_shell("train " + (dir_ / "c.yaml").string() + " optim.lr=abc");
  EXPECT_EQ(r.exit_code, 1);
  std::ofstream(dir_ / "ok.yaml") << "device: cpu\n";
  r = run_kiln_shell("train " + (dir_ / "ok.yaml").string() + " optim.lr=abc");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("optim.lr: expected a float, got 'abc'"), std::string::npos) << r.output;
}

TEST_F(TrainTest, MissingDatasetNamesTheDirectory) {
  Config cfg = tiny("run");
  cfg.set_override("data.dir=" + (dir_ / "no-such-dir").string());
  try {
    train(cfg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir_ / "no-such-dir").string()), std::string::npos) << e.what();
  }
}

TEST_F(TrainTest, TruncatedIdxFileNamesTheFile) {
  const fs::path data = dir_ / "data";
  fs::create_directories(data);
  for (const auto& e : fs::directory_iterator(kDataDir)) fs::copy(e.path(), data / e.path().filename());
  const fs::path victim = data / "train-labels-idx1-ubyte.gz";
  const std::string bytes = read_file(victim);
  std::ofstream(victim, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size() / 2);
  Config cfg = tiny("run");
  cfg.set_override("data.dir=" + data.string());
  try {
    train(cfg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(victim.string()), std::string::npos) << e.what();
  }
}

TEST_F(TrainTest, CorruptCheckpointIsRefusedAndLeftAlone) {
  const TrainSummary s = train(tiny("run"));
  const fs::path ckpt = io::checkpoint_path(s.run_dir / "checkpoints", 40);
  std::string bytes = read_file(ckpt);
  bytes[bytes.size() - 10] ^= 0x5a;  // one flipped bit pattern in the weights
  std::ofstream(ckpt, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());

  Config cfg = tiny("run");
  cfg.set_override("train.resume=" + ckpt.string());
  try {
    train(cfg);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(ckpt.string()), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(ckpt), bytes) << "the corrupt checkpoint was modified";

  // With resume=auto the corrupt newest checkpoint is skipped for the older valid one.
  cfg = tiny("run");
  cfg.set_override("train.resume=auto");
  const TrainSummary again = train(cfg);
  EXPECT_EQ(again.steps, 40);
}

TEST_F(TrainTest, ShapeMismatchedCheckpointNamesKeyAndShapes) {
  const TrainSummary s = train(tiny("run"));
  const fs::path ckpt = io::checkpoint_path(s.run_dir / "checkpoints", 40);
  const std::string before = read_file(ckpt);
  Config cfg = tiny("run");
  cfg.set_override("model.hidden_sizes=[48]");
  try {
    evaluate(cfg, ckpt.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("1.weight: checkpoint has [32, 784], model has [48, 784]"), std::string::npos) << msg;
  }
  EXPECT_EQ(read_file(ckpt), before);
}

// Ctrl-C (SIGINT) mid-run: a checkpoint at the current step, exit code 130, and a resume that
// finishes the run.
TEST_F(TrainTest, SigintSavesACheckpointAndResumes) {
  const fs::path run = dir_ / "run";
  std::ofstream(dir_ / "c.yaml") << "device: cpu\nmodel:\n  hidden_sizes: [32]\ndata:\n  batch_size: 32\n";
  // Wait until training is under way (a few step lines), then interrupt.
  const testing::KilnRun r = testing::run_kiln(
      {"train", (dir_ / "c.yaml").string(), "train.steps=100000", "train.log_every=1", "checkpoint.every=0",
       "train.eval_every=0", "log.run_dir=" + run.string()},
      {.act_after = "step 20/", .act = [](pid_t pid) { kill(pid, SIGINT); }});
  const std::string& output = r.output;
  ASSERT_FALSE(r.signalled) << output;
  EXPECT_EQ(r.exit_code, 130) << output;
  EXPECT_NE(output.find("stopped by SIGINT"), std::string::npos) << output;
  const auto ckpts = io::list_checkpoints(run / "checkpoints");
  ASSERT_EQ(ckpts.size(), 1u) << output;
  const int64_t stopped_at = ckpts[0].first;
  EXPECT_GE(stopped_at, 20);

  Config cfg = Config::load((dir_ / "c.yaml").string());
  cfg.set_override("train.steps=" + std::to_string(stopped_at + 5));
  cfg.set_override("train.resume=auto");
  cfg.set_override("train.eval_every=0");
  cfg.set_override("log.run_dir=" + run.string());
  const TrainSummary s = train(cfg);
  EXPECT_EQ(s.steps, stopped_at + 5);
}

TEST_F(TrainTest, EvalReportsTheTrainedAccuracy) {
  const TrainSummary s = train(tiny("run"));
  const EvalSummary e = evaluate(tiny("run"), s.run_dir.string());
  EXPECT_EQ(e.samples, 10000);
  EXPECT_NEAR(e.accuracy, s.test_accuracy, 1e-12);
}

}  // namespace
}  // namespace kiln
